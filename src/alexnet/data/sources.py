"""Labelled images from the layouts data sets ship in, read without unpacking archives first (Section 2).

`open_source(path)` recognises:

- a folder of class folders ``root/<class>/<image>``, with or without split folders (``train/``, ``val/``,
  ``test/``), and the same inside ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` (one wrapping folder allowed);
- ILSVRC-2012 as shipped: ``ILSVRC2012_img_train.tar`` (1000 inner ``nXXXXXXXX.tar``, read in place),
  ``ILSVRC2012_img_val.tar`` (flat) labelled by the devkit (``ILSVRC2012_validation_ground_truth.txt``,
  whose ids are ``meta.mat``'s order, not the sorted-synset order) or by a csv ``image,synset``; either
  tar alone or a folder holding both, with the devkit or the csv beside them;
- a flat folder of images with an annotations file (``*annotations*.txt``: ``file<TAB>class...``);
- CIFAR-10 python batches (``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``).

Entries are sorted by (split, class, name), so every run sees the same order. Files that cannot be listed
(a symlink loop, an unreadable folder, an empty class folder) are collected in `Source.problems` with the
reason, never raised.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from alexnet.data.containers import (
    CIFAR_BATCHES,
    CifarBatches,
    Container,
    Entry,
    open_container,
    unpickle,
)
from alexnet.data.decode import Payload
from alexnet.errors import DataError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_ILSVRC_TAR = re.compile(r"ILSVRC2012_img_(train|val)\.tar")
_ILSVRC_VAL = re.compile(r"ILSVRC2012_val_(\d{8})")
_DEVKIT = "ILSVRC2012_devkit_t12"
_NAMES_FILE = "words.txt"  # "wnid<TAB>name, other name" per line, as Tiny ImageNet and ImageNet-21k ship it
_UNLABELED_FOLDER = "images"  # a split holding only images/ (Tiny ImageNet's test/) has no labels


@dataclass
class Source:
    """Sorted labelled entries of a data set plus the containers they are read from.

    The classes are those of the training split (every class of a source without one); `names` holds
    the human names a data set ships for its class ids (``words.txt``), if any.
    """

    path: Path
    parts: list[Container]
    entries: list[Entry]
    problems: list[tuple[str, str]]
    names: dict[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        train = {e.label for e in self.entries if e.split == "train"}
        return sorted(train or {e.label for e in self.entries})

    @property
    def splits(self) -> list[str]:
        present = {e.split for e in self.entries}
        return [s for s in SPLITS if s in present]

    def read(self, entries: Sequence[Entry]) -> Iterator[tuple[Entry, Payload | Exception]]:
        """Yield (entry, payload or the error reading it) for every entry given, each exactly once."""
        by_part: dict[int, list[Entry]] = defaultdict(list)
        for e in entries:
            by_part[e.part].append(e)
        for part, group in sorted(by_part.items()):
            yield from self.parts[part].read_many(group)


def _split_name(name: str) -> str | None:
    """The split a folder name stands for (``train``, ``val``, ``validation``, ``test``), if any."""
    return _SPLIT_ALIASES.get(name.lower())


def _target_split(name: str) -> str:
    """The split a whole source stands for by its name (``val/``, ``ILSVRC2012_img_val.tar``); else train."""
    stem = name.split(".")[0]
    return _split_name(stem) or _split_name(stem.rsplit("_", 1)[-1]) or "train"


def _strip_wrapper(files: list[str]) -> str:
    """The prefix of single wrapping folders (``imagenette2-224/``) that every path shares."""
    prefix = ""
    rest = files
    while rest and all(f.count("/") >= 2 for f in rest):
        top = {f.split("/", 1)[0] for f in rest}
        if len(top) != 1 or _split_name(next(iter(top))) is not None:
            break
        head = next(iter(top))
        prefix += head + "/"
        rest = [f.split("/", 1)[1] for f in rest]
    return prefix


def _parse_label_table(text: str, what: str) -> dict[str, str]:
    """Map image stem -> class from ``file<TAB>class...`` or ``image,synset`` lines (header row skipped)."""
    labels = {}
    dialect = "excel-tab" if "\t" in text.split("\n", 1)[0] else "excel"
    for row in csv.reader(io.StringIO(text), dialect=dialect):
        if len(row) < 2 or not row[0].strip():
            continue
        image, label = row[0].strip(), row[1].split()[0] if row[1].split() else ""
        if image.lower() in {"imageid", "image", "image_name", "file", "filename", "name"}:
            continue
        labels[PurePosixPath(image).stem] = label
    if not labels:
        raise DataError(f"{what} holds no 'image<TAB or comma>class' rows")
    return labels


def _read_meta_mat(data: bytes, what: str) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID from the devkit's meta.mat (needs scipy)."""
    try:
        from scipy.io import loadmat  # only the ILSVRC devkit's meta.mat needs scipy
    except ImportError as e:
        raise DataError(
            f"reading {what} needs scipy: `pip install scipy`, or label the validation images with a csv "
            f"'image,synset' (ILSVRC2012_val_labels.csv) beside the archive instead"
        ) from e
    synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}


def ilsvrc_val_labels(ground_truth: str, id_to_wnid: dict[int, str]) -> dict[str, str]:
    """Map ``ILSVRC2012_val_NNNNNNNN`` -> synset; ground-truth line i holds the meta.mat id of image i."""
    labels = {}
    for i, line in enumerate(ground_truth.split(), start=1):
        ilsvrc_id = int(line)
        if ilsvrc_id not in id_to_wnid:
            raise DataError(f"ground truth line {i} holds id {ilsvrc_id}, which meta.mat does not define")
        labels[f"ILSVRC2012_val_{i:08d}"] = id_to_wnid[ilsvrc_id]
    return labels


def _find_val_labels(folder: Path) -> dict[str, str] | None:
    """Validation labels beside an ILSVRC val archive: a csv, or the devkit (folder, tar.gz, loose files)."""
    for csv_path in sorted(folder.glob("*.csv")):
        if "val" in csv_path.name.lower():
            return _parse_label_table(csv_path.read_text(), str(csv_path))
    files: dict[str, tuple[str, bytes]] = {}
    for path in (folder, folder / _DEVKIT / "data", folder / "data"):
        for name in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
            if (path / name).is_file() and name not in files:
                files[name] = (str(path / name), (path / name).read_bytes())
    devkit_tar = folder / f"{_DEVKIT}.tar.gz"
    if len(files) < 2 and devkit_tar.is_file():
        with tarfile.open(devkit_tar) as tf:
            for m in tf:
                base = PurePosixPath(m.name).name
                if m.isfile() and base in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
                    files[base] = (f"{devkit_tar}:{m.name}", tf.extractfile(m).read())
    if len(files) < 2:
        return None
    mat_name, mat = files["meta.mat"]
    return ilsvrc_val_labels(
        files["ILSVRC2012_validation_ground_truth.txt"][1].decode(), _read_meta_mat(mat, mat_name)
    )


class _Lister:
    """Turns one container's relative paths into entries, collecting what it cannot label."""

    def __init__(self, container: Container, part: int, external_labels: dict[str, str] | None):
        self.c = container
        self.part = part
        self.external_labels = external_labels
        self.entries: list[Entry] = []
        self.problems: list[tuple[str, str]] = list(container.problems)
        self.names: dict[str, str] = {}

    def list(self, default_split: str) -> None:
        prefix = _strip_wrapper(list(self.c.files))
        files = {p[len(prefix) :]: p for p in self.c.files if p.startswith(prefix)}
        dirs = {d[len(prefix) :] for d in self.c.dirs if d.startswith(prefix) and len(d) > len(prefix)}
        dirs |= {str(parent) for rel in files for parent in PurePosixPath(rel).parents if str(parent) != "."}
        by_split: dict[str, dict[str, str]] = defaultdict(dict)
        split_dirs = {d for d in dirs if "/" not in d and _split_name(d) is not None}
        for rel, full in files.items():
            top, _, rest = rel.partition("/")
            if split_dirs and top in split_dirs:
                by_split[top][rest] = full
            elif rel == _NAMES_FILE:
                self.names = _parse_names(self._text(full))
            elif split_dirs:
                self.problems.append((full, "outside the split folders (train/, val/, test/); not used"))
            else:
                by_split[""][rel] = full
        for top, split_files in sorted(by_split.items()):
            split = _split_name(top) if top else default_split
            sub_dirs = {d.partition("/")[2] for d in dirs if d.startswith(top + "/")} if top else dirs
            self._list_split(split, top, split_files, sub_dirs)

    def _list_split(self, split: str, top: str, files: dict[str, str], dirs: set[str]) -> None:
        annotations = [
            f for f in files if "/" not in f and "annotation" in f.lower() and f.endswith((".txt", ".csv"))
        ]
        labels = self.external_labels
        if annotations:
            labels = _parse_label_table(self._text(files[annotations[0]]), files[annotations[0]])
            files = {k: v for k, v in files.items() if k != annotations[0]}
        flat = [f for f in files if "/" not in f]
        if labels is None and split != "train" and {f.split("/", 1)[0] for f in files} == {_UNLABELED_FOLDER}:
            self.problems.append((
                f"{top}/{_UNLABELED_FOLDER}/".lstrip("/"),
                f"unlabeled split ({len(files)} files, no class folders or annotations): not stored",
            ))
            return
        if labels is None and flat and len(flat) == len(files):
            hint = (
                "put the ILSVRC2012 devkit (or a csv 'image,synset' named *val*.csv) beside it"
                if _ILSVRC_VAL.match(flat[0])
                else "sort the images into class folders or add an annotations file (name<TAB>class)"
            )
            raise DataError(f"images in {self.c.path}/{top} have no class folders and no labels: {hint}")
        used_dirs = set()
        for rel, full in files.items():
            if labels is not None:
                label = labels.get(PurePosixPath(rel).stem)
                if label is None:
                    self.problems.append((full, "no label for this file in the annotations"))
                    continue
            elif "/" not in rel:
                self.problems.append((full, "not inside a class folder; not used"))
                continue
            else:
                folder = rel.split("/", 1)[0]
                used_dirs.add(folder)
                label = folder.removesuffix(".tar")
            self.entries.append(Entry(split, label, full, self.part, self.c.files[full]))
        if labels is None:
            for d in sorted({d for d in dirs if "/" not in d} - used_dirs):
                self.problems.append((f"{top}/{d}".lstrip("/"), "empty class folder; not a class"))

    def _text(self, path: str) -> str:
        return self.c.read(self.c.files[path]).decode("utf-8", errors="replace")


def _parse_names(text: str) -> dict[str, str]:
    """``words.txt``: class id -> its first name ("n01443537<TAB>goldfish, Carassius auratus" -> goldfish)."""
    names = {}
    for line in text.splitlines():
        class_id, _, name = line.partition("\t")
        if class_id.strip() and name.strip():
            names[class_id.strip()] = name.split(",")[0].strip()
    return names


def _check_eval_classes(entries: list[Entry], path: Path) -> None:
    """Every class of a validation or test split must be a training class: indices come from training."""
    train = {e.label for e in entries if e.split == "train"}
    if not train:
        return
    for split in ("val", "test"):
        absent = sorted({e.label for e in entries if e.split == split} - train)
        if absent:
            raise DataError(
                f"split {split!r} of {path} has class(es) the train split lacks: {', '.join(absent[:5])}"
                f"{' ...' if len(absent) > 5 else ''}; a network cannot predict a class it never trained on "
                "(fix the labels, or move those images out)"
            )


def _cifar_entries(container: Container, part: int) -> tuple[CifarBatches, list[Entry]] | None:
    paths = {PurePosixPath(p).name: p for p in container.files}
    if "batches.meta" not in paths or "data_batch_1" not in paths:
        return None
    meta = unpickle(container.read(container.files[paths["batches.meta"]]), "batches.meta")
    names = [n.decode() for n in meta[b"label_names"]]
    cifar = CifarBatches(container, {b: paths[b] for b in CIFAR_BATCHES if b in paths})
    entries = []
    for batch in cifar.batch_paths:
        d = cifar.batch(batch)
        split = "test" if batch == "test_batch" else "train"
        for row, (label, fname) in enumerate(zip(d[b"labels"], d[b"filenames"], strict=True)):
            entries.append(
                Entry(split, names[label], f"{batch}/{row:05d}_{fname.decode()}", part, (batch, row))
            )
    return cifar, entries


def open_source(path: str | os.PathLike) -> Source:
    """Recognise the layout at `path` (see the module docstring) and list its labelled entries, sorted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data source {path} does not exist")
    ilsvrc = sorted(p for p in path.iterdir() if _ILSVRC_TAR.fullmatch(p.name)) if path.is_dir() else []
    targets = ilsvrc or [path]
    parts: list[Container] = []
    entries: list[Entry] = []
    problems: list[tuple[str, str]] = []
    names: dict[str, str] = {}
    for part, target in enumerate(targets):
        container = open_container(target)
        cifar = _cifar_entries(container, part)
        if cifar is not None:
            parts.append(cifar[0])
            entries += cifar[1]
            problems += container.problems
            continue
        split = _target_split(target.name)
        labels = _find_val_labels(target.parent if target.is_file() else target) if split == "val" else None
        lister = _Lister(container, part, labels)
        lister.list(split)
        parts.append(container)
        entries += lister.entries
        problems += lister.problems
        names |= lister.names
    if not entries:
        raise DataError(
            f"no labelled images found in {path}; expected class folders, an ILSVRC tar or CIFAR batches"
        )
    _check_eval_classes(entries, path)
    return Source(path, parts, sorted(entries), sorted(problems), names)
