"""The prepared store: images decoded once to SxS uint8 (Section 2: shorter side 256, centre crop), on disk.

Layout (``meta.json`` is written last, so its presence means the store is complete)::

    STORE/meta.json                 size, encoding, splits and their shard counts, classes, class_names,
                                    eigvals (3,), eigvecs (3, 3) columns = eigenvectors, source, version
    STORE/mean.npy                  float32 (3, S, S) per-pixel mean of the train split, 0..255 scale
    STORE/report.json               every skipped file with its reason
    STORE/<split>/shard-NNNNN.npy   raw uint8 (n, 3, S, S), RGB, read with pread (see _RawShard)
    STORE/<split>/shard-NNNNN.jpeg  or: an int64 .npy of n+1 byte offsets followed by n JPEG images
    STORE/<split>/labels.npy        int64 (N,)
    STORE/<split>/files.json        source name of each image

Every file is written to a temporary name, fsynced and renamed, so a reader (or a resumed prepare) never
sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from alexnet import fsutil
from alexnet.data.decode import quiet_torchvision_io
from alexnet.errors import DataError

STORE_VERSION = 1
ENCODINGS = ("raw", "jpeg")
JPEG_QUALITY = 95
SPLIT_ORDER = ("train", "val", "test")
_SUFFIX = {"raw": ".npy", "jpeg": ".jpeg"}
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def shard_path(root: Path, split: str, index: int, encoding: str) -> Path:
    return Path(root) / split / f"shard-{index:05d}{_SUFFIX[encoding]}"


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """:func:`alexnet.fsutil.atomic_write`, with a full disk (ENOSPC, or EFBIG under a file-size limit)
    reported as a DataError naming the file; nothing half-written stays behind."""
    try:
        fsutil.atomic_write(path, write)
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise DataError(
                f"disk full while writing {path} ({os.strerror(e.errno)}); the partial file was removed. "
                f"Free space under {Path(path).parent} (or pass another --out) and run again: "
                "finished shards are kept"
            ) from e
        raise


def write_json(path: Path, obj: Any) -> None:
    """JSON written atomically, a full disk reported as by `atomic_write`."""
    fsutil.write_json(path, obj, indent=1, write=atomic_write)


class _Sink:
    """Hides the real file from numpy, whose fast path (tofile) drops the errno of a failed write."""

    def __init__(self, f: IO[bytes]):
        self.write = f.write


def _save_npy(f: IO[bytes], array: np.ndarray) -> None:
    np.save(_Sink(f), array, allow_pickle=False)


def write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: _save_npy(f, array))


def encode_jpegs(images: np.ndarray) -> list[bytes]:
    """Encode uint8 (n, 3, S, S) images as JPEG at quality 95 (the store's compressed variant)."""
    if len(images) == 0:
        return []
    with quiet_torchvision_io():
        encoded = encode_jpeg(list(torch.from_numpy(np.ascontiguousarray(images))), quality=JPEG_QUALITY)
    return [bytes(t.numpy().tobytes()) for t in encoded]


def write_shard(root: Path, split: str, index: int, images: np.ndarray, encoding: str) -> Path:
    """Atomically write one shard of uint8 (n, 3, S, S) images; returns its path."""
    path = shard_path(root, split, index, encoding)
    if encoding == "raw":
        write_npy(path, np.ascontiguousarray(images, dtype=np.uint8))
        return path
    blobs = encode_jpegs(images)
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])

    def write(f: IO[bytes]) -> None:
        _save_npy(f, offsets)
        for b in blobs:
            f.write(b)

    atomic_write(path, write)
    return path


class _JpegShard:
    """One JPEG shard: offsets in memory, the bytes memory-mapped, decoded on access."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            self.offsets = np.load(f, allow_pickle=False)
            start = f.tell()
        self.data = np.memmap(path, dtype=np.uint8, mode="r", offset=start) if self.offsets[-1] else None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def blobs(self, key: slice | np.ndarray) -> list[torch.Tensor]:
        """The encoded bytes of images ``key``, each a uint8 tensor (what ``decode_jpeg`` takes)."""
        local = np.arange(len(self))[key] if isinstance(key, slice) else key
        return [torch.from_numpy(np.array(self.data[self.offsets[i] : self.offsets[i + 1]])) for i in local]

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        with quiet_torchvision_io():
            return torch.stack(decode_jpeg(self.blobs(key), mode=ImageReadMode.RGB)).numpy()


_PREAD = hasattr(os, "preadv")  # Linux, macOS; elsewhere a memory map is read


class _RawShard:
    """One raw shard, (n, 3, S, S) uint8 in a .npy file, read with ``os.preadv`` straight into the batch.

    A memory map's first touch faults every page in (with the kernel's fault-around, one fault per 64 KB),
    which made a batch from the store several times slower to gather than a positional read (on the 2-core
    development machine 13,000 vs 45,000 images/s on one thread), and a store larger than memory is touched
    for the first time in every epoch. Only the .npy header is read on opening; one descriptor per shard is
    opened on first use (a memory map only where the platform has no preadv). Pickled (a worker process),
    it carries neither: the worker opens its own.
    """

    def __init__(self, path: Path, size: int):
        self.path, self.size = Path(path), size
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise DataError(f"shard {self.path} is a .npy file of format {version}; prepare the store again")
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or tuple(shape[1:]) != (3, size, size):
            raise DataError(f"shard {self.path} holds {dtype} {'Fortran-order ' if fortran else ''}{shape}, not "
                            f"(n, 3, {size}, {size}) uint8 as meta.json says; prepare the store again")
        self.count = int(shape[0])
        self._fd: int | None = None
        self._map: np.ndarray | None = None
        self._lock = threading.Lock()  # the loader's threads read one shard at the same time

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_map", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _fd=None, _map=None, _lock=threading.Lock())

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(Exception):  # at interpreter exit even `os` may be gone
                os.close(fd)

    def read(self, local: np.ndarray, out: np.ndarray, where: np.ndarray) -> None:
        """Images ``local`` of this shard into ``out[where]``."""
        if not _PREAD:
            if self._map is None:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset,
                                      shape=(self.count, 3, self.size, self.size))
            out[where] = self._map[local]
            return
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
        nbytes = 3 * self.size * self.size
        for i, j in zip(local.tolist(), where.tolist(), strict=True):
            buf, done = memoryview(out[j]).cast("B"), 0
            while done < nbytes:  # a read may return less than asked (network file systems); 0 is the end
                got = os.preadv(self._fd, [buf[done:]], self.offset + i * nbytes + done)
                if got == 0:
                    raise DataError(f"shard {self.path} ended after {done} of {nbytes} bytes of image {i}: the "
                                    "file was truncated after it was prepared; prepare the store again")
                done += got


class ShardedImages:
    """The images of one split as one array-like over its shards: ``len()`` and numpy-style indexing.

    ``images[i]`` gives (3, S, S); ``images[a:b]`` and ``images[index_array]`` give (k, 3, S, S) uint8.
    Raw shards are read with positional reads (:class:`_RawShard`), JPEG shards decoded on access.
    """

    def __init__(self, paths: Sequence[Path], counts: Sequence[int], encoding: str, size: int):
        self.size = size
        self.paths = [Path(p) for p in paths]
        self.shards = [_RawShard(p, size) if encoding == "raw" else _JpegShard(p) for p in paths]
        for p, s, n in zip(paths, self.shards, counts, strict=True):
            if len(s) != n:
                raise DataError(f"shard {p} holds {len(s)} images but meta.json says {n}; prepare again")
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.size, self.size)

    @property
    def encoded(self) -> bool:
        """True for JPEG shards: `blobs` gives the bytes, to be decoded where the batch goes (a GPU)."""
        return bool(self.shards) and isinstance(self.shards[0], _JpegShard)

    def blobs(self, index: np.ndarray) -> list[torch.Tensor]:
        """The JPEG bytes of images ``index`` (in that order), for decoding elsewhere (`decode_jpeg` on a GPU)."""
        if not self.encoded:
            raise DataError("this store holds raw pixels, not JPEG bytes: there is nothing to decode")
        index = self._index(index)
        shard_of = np.searchsorted(self.starts, index, side="right") - 1
        return [self.shards[s].blobs(np.array([i - self.starts[s]]))[0]
                for i, s in zip(index, shard_of, strict=True)]

    def _index(self, key: slice | np.ndarray) -> np.ndarray:
        index = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        if index.ndim != 1:
            raise IndexError(
                f"store images take an int, a slice or a 1-d index array, not shape {index.shape}"
            )
        n = len(self)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        return np.where(index < 0, index + n, index)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        index = self._index(key)
        out = np.empty((len(index), 3, self.size, self.size), dtype=np.uint8)
        shard_of = np.searchsorted(self.starts, index, side="right") - 1
        for s in np.unique(shard_of):
            where = np.nonzero(shard_of == s)[0]
            local = index[where] - self.starts[s]
            if isinstance(self.shards[s], _RawShard):
                self.shards[s].read(local, out, where)
            elif len(local) > 1 and np.all(np.diff(local) == 1):
                out[where] = self.shards[s][local[0] : local[-1] + 1]
            else:
                out[where] = self.shards[s][local]
        return out


class Store:
    """A complete prepared store, opened read-only. See the module docstring for the layout."""

    def __init__(self, root: Path, meta: dict):
        self.root = root
        self.meta = meta
        self.size: int = meta["size"]
        self.encoding: str = meta["encoding"]
        self.splits: list[str] = list(meta["splits"])
        self.classes: list[str] = meta["classes"]
        self.class_names: list[str] = meta["class_names"]
        self.num_classes: int = len(self.classes)
        self.eigvals = np.asarray(meta["eigvals"], dtype=np.float64)
        self.eigvecs = np.asarray(meta["eigvecs"], dtype=np.float64)
        self._mean: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        root = Path(path)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            what = "an incomplete store (prepare was interrupted)" if root.is_dir() else "missing"
            raise FileNotFoundError(
                f"{meta_path} not found: {root} is {what}; "
                f"run `alexnet prepare SOURCE --out {root}` to finish it"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != STORE_VERSION:
            raise DataError(f"{root} is store version {meta.get('version')}, this code reads {STORE_VERSION}")
        return cls(root, meta)

    def _check_split(self, split: str) -> None:
        if split not in self.meta["splits"]:
            raise DataError(f"split {split!r} not in store {self.root}; it has {self.splits}")

    @property
    def train_split(self) -> str:
        if "train" not in self.splits:
            raise DataError(f"store {self.root} has no train split, only {self.splits}")
        return "train"

    @property
    def eval_split(self) -> str:
        for split in ("val", "test"):
            if split in self.splits:
                return split
        raise DataError(f"store {self.root} has no val or test split, only {self.splits}")

    def labels(self, split: str) -> np.ndarray:
        self._check_split(split)
        return np.load(self.root / split / "labels.npy")

    def files(self, split: str) -> list[str]:
        self._check_split(split)
        return json.loads((self.root / split / "files.json").read_text())

    def images(self, split: str) -> ShardedImages:
        self._check_split(split)
        counts = self.meta["splits"][split]["shards"]
        paths = [shard_path(self.root, split, i, self.encoding) for i in range(len(counts))]
        return ShardedImages(paths, counts, self.encoding, self.size)

    def load_split(self, split: str) -> torch.Tensor:
        """Every image of `split` in memory as a uint8 tensor (N, 3, S, S)."""
        return torch.from_numpy(self.images(split)[:])  # each shard read straight into the one array

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            self._mean = np.load(self.root / "mean.npy")
        return self._mean
