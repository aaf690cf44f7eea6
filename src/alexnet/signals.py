"""SIGINT and SIGTERM as a flag the training loop polls, so a stopped run saves before it exits."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopSignal:
    """Turns SIGINT and SIGTERM into a flag the training loop checks after every step, so the run saves
    a checkpoint and returns instead of dying mid-write. The first signal of a kind puts that kind's previous
    handler back, so a second one acts as it would without this (a second Ctrl-C raises KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        previous = self._previous.get(signum)
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self._previous = previous
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)


