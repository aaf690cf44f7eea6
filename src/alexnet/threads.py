"""Intra-op thread control for the many small CPU copies of the input pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_intraop_thread() -> Iterator[None]:
    """Run torch CPU ops on one intra-op thread inside the block; the previous count is restored.

    For many small copies: on a 2-core machine shared with another busy process, a two-thread OpenMP
    region stalls for up to hundreds of milliseconds waiting for the second core (docs/performance.md).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
