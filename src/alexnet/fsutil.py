"""Crash-safe file writing shared by the store and the checkpoints."""

from __future__ import annotations

import json
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


def json_text(data: Any, indent: int | None = 2) -> bytes:
    """`data` as the UTF-8 JSON every file of this package is written in: indented, non-ASCII kept, newline."""
    return (json.dumps(data, indent=indent, ensure_ascii=False) + "\n").encode()


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2,
               write: Callable[[str | os.PathLike, Callable[[IO[bytes]], Any]], None] | None = None) -> None:
    """Write `data` as JSON atomically (`atomic_write`, or `write` where the caller reports errors its own
    way, as the store does for a full disk)."""
    text = json_text(data, indent)
    (write or atomic_write)(path, lambda f: f.write(text))
