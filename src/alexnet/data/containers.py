"""The files a data set is read from, without unpacking: folders, zip files, tar files (plain, read in
place by offset; compressed, read in one streaming pass) and CIFAR-10's pickled batches (unpickled with
an allow-list, so a batch file cannot run code). `alexnet.data.sources` turns their file lists into
labelled entries, one reader per layout.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from alexnet.data.decode import Payload
from alexnet.errors import DataError

CIFAR_BATCHES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
)
METADATA_SUFFIXES = (".txt", ".csv", ".mat")
# What operating systems leave in folders and archives: Finder's .DS_Store and AppleDouble ._* files (and
# the __MACOSX/ folder macOS zips carry them in), Windows' Thumbs.db and desktop.ini. Never data.
_SIDE_FILE_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
_SIDE_FOLDERS = {"__macosx"}


def is_side_file(path: str) -> bool:
    """Whether a relative POSIX path is an operating system's side file, or lies in a side folder."""
    parts = PurePosixPath(path).parts
    if any(p.lower() in _SIDE_FOLDERS for p in parts):
        return True
    name = parts[-1] if parts else ""
    return name.lower() in _SIDE_FILE_NAMES or name.startswith("._")


@dataclass(frozen=True, order=True, slots=True)
class Entry:
    """One labelled image: its split, class id, unique name inside the source, and where to read it."""

    split: str
    label: str
    name: str
    part: int = field(default=0, compare=False)
    key: object = field(default=None, compare=False)


class Container:
    """Files of one folder or archive: ``files`` maps a relative POSIX path to its read key."""

    def __init__(self, path: Path):
        self.path = path
        self.files: dict[str, object] = {}
        self.dirs: set[str] = set()
        self.problems: list[tuple[str, str]] = []

    def read(self, key: object) -> bytes:
        raise NotImplementedError

    def read_many(self, entries: Sequence[Entry]) -> Iterator[tuple[Entry, Payload | Exception]]:
        """Yield each entry's bytes (or the error reading it), in any order."""
        for e in entries:
            try:
                yield e, self.read(e.key)
            except OSError as err:
                yield e, err


class _Folder(Container):
    """A directory tree; symlinks are followed, loops and unreadable entries reported, not raised."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._walk(path, "", set())

    def _walk(self, folder: Path, rel: str, seen: set[tuple[int, int]]) -> None:
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                self.problems.append((rel, "symlink loop: the folder links back to one already visited"))
                return
            seen = seen | {(st.st_dev, st.st_ino)}
            children = sorted(os.scandir(folder), key=lambda d: d.name)
        except OSError as e:
            self.problems.append((rel or str(folder), f"cannot list folder: {e.strerror}"))
            return
        if rel:
            self.dirs.add(rel)
        for child in children:
            child_rel = f"{rel}/{child.name}" if rel else child.name
            try:
                if child.is_dir():
                    self._walk(Path(child.path), child_rel, seen)
                elif child.is_file():
                    self.files[child_rel] = child.path
                else:
                    os.stat(child.path)
                    self.problems.append((child_rel, "not a regular file"))
            except OSError as e:
                self.problems.append((child_rel, f"cannot read: {e.strerror} (broken link or symlink loop?)"))

    def read(self, key: object) -> bytes:
        with open(key, "rb") as f:
            return f.read()


class _Zip(Container):
    def __init__(self, path: Path):
        super().__init__(path)
        self.zip = zipfile.ZipFile(path)
        for info in self.zip.infolist():
            name = info.filename.rstrip("/")
            if info.is_dir():
                self.dirs.add(name)
            else:
                self.files[name] = info.filename

    def read(self, key: object) -> bytes:
        return self.zip.read(key)


class _PlainTar(Container):
    """An uncompressed tar read in place by offset; inner ``.tar`` members (ILSVRC train) act as folders."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.file = open(path, "rb")  # noqa: SIM115 (lives as long as the source)
        with tarfile.open(fileobj=self.file, mode="r:") as tf:
            for m in tf:
                if m.isdir():
                    self.dirs.add(m.name.rstrip("/"))
                elif m.isfile() and m.name.endswith(".tar"):
                    self._add_inner(tf, m)
                elif m.isfile():
                    self.files[m.name] = (m.offset_data, m.size)

    def _add_inner(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.dirs.add(member.name)
        try:
            with tarfile.open(fileobj=tf.extractfile(member), mode="r:") as inner:
                for m in inner:
                    if m.isfile():
                        self.files[f"{member.name}/{m.name}"] = (member.offset_data + m.offset_data, m.size)
        except tarfile.TarError as e:
            self.problems.append((member.name, f"corrupt inner tar: {e}"))

    def read(self, key: object) -> bytes:
        offset, size = key
        self.file.seek(offset)
        data = self.file.read(size)
        if len(data) != size:
            raise OSError(f"archive {self.path} ends inside this member (truncated download?)")
        return data


class _StreamTar(Container):
    """A compressed tar: no random access, so images are read in one streaming pass in archive order.

    Small metadata members (annotations, csv, devkit, CIFAR batches) are kept in memory from the listing pass.
    """

    def __init__(self, path: Path):
        super().__init__(path)
        self.cache: dict[str, bytes] = {}
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                if m.isdir():
                    self.dirs.add(m.name.rstrip("/"))
                elif m.isfile():
                    self.files[m.name] = m.name
                    base = PurePosixPath(m.name).name
                    if base.endswith(METADATA_SUFFIXES) or base in CIFAR_BATCHES or base == "batches.meta":
                        self.cache[m.name] = tf.extractfile(m).read()

    def read(self, key: object) -> bytes:
        if key not in self.cache:
            raise DataError(f"{self.path} is compressed: read its images with read_many (one streaming pass)")
        return self.cache[key]

    def read_many(self, entries: Sequence[Entry]) -> Iterator[tuple[Entry, Payload | Exception]]:
        wanted = {e.key: e for e in entries}
        with tarfile.open(self.path, mode="r|*") as tf:
            for m in tf:
                e = wanted.pop(m.name, None)
                if e is not None:
                    try:
                        yield e, tf.extractfile(m).read()
                    except (OSError, tarfile.TarError) as err:
                        yield e, err
                if not wanted:
                    return
        for e in wanted.values():
            yield e, OSError(f"{e.name} vanished from {self.path} between listing and reading")


class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only the numpy array reconstruction they need, so no code runs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how a protocol-2 pickle spells a bytes object
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}: refusing to load it")
        return super().find_class(module, name)


def unpickle(data: bytes, what: str) -> dict:
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise DataError(
            f"{what} is not a CIFAR-10 python batch ({e}); re-download cifar-10-python.tar.gz"
        ) from e


class CifarBatches(Container):
    """CIFAR-10 python batches: payloads are decoded HWC uint8 arrays, keyed by (batch path, row)."""

    def __init__(self, inner: Container, batch_paths: dict[str, str]):
        super().__init__(inner.path)
        self.inner = inner
        self.batch_paths = batch_paths
        self.batches: dict[str, dict] = {}

    def batch(self, name: str) -> dict:
        if name not in self.batches:
            path = self.batch_paths[name]
            self.batches[name] = unpickle(self.inner.read(self.inner.files[path]), f"{self.path}:{path}")
        return self.batches[name]

    def read(self, key: object) -> np.ndarray:
        name, row = key
        return self.batch(name)[b"data"][row].reshape(3, 32, 32).transpose(1, 2, 0)


def open_container(path: Path) -> Container:
    """The folder or archive at `path`, its operating-system side files (`is_side_file`) left out at every
    level, so that no layout rule, class list or note ever sees them."""
    container = _open(path)
    container.files = {k: v for k, v in container.files.items() if not is_side_file(k)}
    container.dirs = {d for d in container.dirs if not is_side_file(d)}
    container.problems = [(p, why) for p, why in container.problems if not is_side_file(p)]
    return container


def _open(path: Path) -> Container:
    if path.is_dir():
        return _Folder(path)
    if zipfile.is_zipfile(path):
        return _Zip(path)
    if not tarfile.is_tarfile(path):
        raise DataError(f"{path} is neither a folder nor a .tar/.tar.gz/.tgz/.zip archive")
    with open(path, "rb") as f:
        magic = f.read(6)
    compressed = magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
    return _StreamTar(path) if compressed else _PlainTar(path)


