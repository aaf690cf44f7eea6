"""Crash-safe file writing shared by the store and the checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def temporary_name(path: Path) -> Path:
    """The hidden temporary file `path` is written through (``.NAME.tmp-PID`` beside it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``.

    A crash or kill leaves either the old file or the new one, never a mixture. On any error (a full disk
    raises OSError ENOSPC, a file-size limit EFBIG) the temporary file is removed and the exception
    propagates; whatever was at ``path`` before is untouched.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def remove_temporaries(folder: Path) -> None:
    """Delete the temporaries that processes killed mid-write left anywhere below ``folder``."""
    for tmp in Path(folder).rglob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)
