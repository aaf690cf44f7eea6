"""Where data sets and prepared stores are found: ALEXNET_DATA, ALEXNET_CACHE and name lookup.

A data set (the input of ``alexnet prepare``) is a path, or a bare name looked up under ``$ALEXNET_DATA``
(default ``~/.cache/alexnet``) with the usual archive suffixes. A prepared store (``data.store``) is a
path, or a name under ``$ALEXNET_CACHE/stores`` (default ``~/.cache/alexnet/stores``).
"""

from __future__ import annotations

import os
from pathlib import Path

ARCHIVE_SUFFIXES = ("", ".tar.gz", ".tgz", ".tar", ".zip")


def data_root() -> Path:
    """Where raw data sets are looked up by name: $ALEXNET_DATA, default ~/.cache/alexnet."""
    return Path(os.environ.get("ALEXNET_DATA", "~/.cache/alexnet")).expanduser()


def cache_dir() -> Path:
    """Where prepared stores live: $ALEXNET_CACHE, default ~/.cache/alexnet."""
    return Path(os.environ.get("ALEXNET_CACHE", Path.home() / ".cache" / "alexnet")).expanduser()


def resolve_source(source: str | os.PathLike) -> Path:
    """A path as given, or a bare name looked up under $ALEXNET_DATA with the usual archive suffixes."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    root = data_root()
    tried = [path]
    if len(path.parts) == 1:
        for suffix in ARCHIVE_SUFFIXES:
            candidate = root / f"{source}{suffix}"
            if candidate.exists():
                return candidate
            tried.append(candidate)
    raise FileNotFoundError(
        f"data set {str(source)!r} not found; looked at: {', '.join(map(str, tried))}. "
        f"Download it (for example "
        f"imagenette2-224.tgz from https://github.com/fastai/imagenette) into ALEXNET_DATA={root} "
        f"(set ALEXNET_DATA to change it) or pass the path of a folder or archive"
    )


def resolve_store(store: str | os.PathLike) -> Path:
    """`data.store` as a folder: an existing path, else a name under cache_dir()/stores."""
    store = str(store)
    path = Path(store).expanduser()
    if path.exists() or os.sep in store:
        return path
    return cache_dir() / "stores" / store
