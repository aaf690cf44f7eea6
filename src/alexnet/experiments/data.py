"""The stores the experiments train on, prepared once from $ALEXNET_DATA: CIFAR-10 (the cifar10-jpeg
archive) for the small nets, Imagenette (the demo's store) for the paper's network.

`cifar10_store(train_per_class, test_per_class)` is the whole data set (both None) or the first images of
each class of each split in file-name order (a reduced budget's data). `ImagenetteBudget` is the budget of
the experiments on the paper's network, and `imagenette_overrides` points their runs at its store.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from alexnet.paths import cache_dir, resolve_source

_log = logging.getLogger(__name__).info  # where progress lines go unless a caller says otherwise

CIFAR10 = "cifar10-jpeg"
IMAGENETTE = "imagenette"  # the demo's store, under $ALEXNET_CACHE/stores
IMAGENETTE_SOURCE = "imagenette2-224"


@dataclass(frozen=True)
class ImagenetteBudget:
    """How long the runs of an experiment on the paper's network train.

    epochs: every run's number of epochs (or the most it may train, for an experiment that stops early).
    reduced: whether this is less than the experiment's full length (the table says so).
    precision: run.precision of every run (None: the preset's).
    store: a prepared store (path or name); the default is the demo's Imagenette store.
    variants: the variants this budget trains, by key (None: every variant of the experiment).
    threads: run.threads of every run (0: torch's default), fixed so that a run repeats exactly on a machine
        (oneDNN's results depend on the number of threads).
    """

    name: str
    epochs: int
    reduced: bool
    note: str
    precision: str | None = None
    store: str = IMAGENETTE
    variants: tuple[str, ...] | None = None
    threads: int = 0


def imagenette_overrides(budget: ImagenetteBudget, overrides: tuple[str, ...]) -> tuple[str, ...]:
    """`overrides` with the budget's threads (if it fixes them and the overrides do not) and data.store set
    to the demo's Imagenette store (prepared once), unless they set a store or the budget names another."""
    if budget.threads and not any(o.startswith("run.threads=") for o in overrides):
        overrides = (*overrides, f"run.threads={budget.threads}")
    if budget.store != IMAGENETTE or any(o.startswith("data.store=") for o in overrides):
        return overrides
    from alexnet.data.prepare import cached_store  # imports torch: only when the store is needed

    return (f"data.store={cached_store(IMAGENETTE, IMAGENETTE_SOURCE)}", *overrides)


def _subset_members(archive: tarfile.TarFile, per_class: dict[str, int | None]) -> list[tarfile.TarInfo]:
    files = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
    kept, counts = [], {}
    for m in files:
        parts = Path(m.name).parts  # cifar10/<split>/<class>/NNNN.jpg
        if len(parts) != 4:
            continue
        counts[parts[1:3]] = n = counts.get(parts[1:3], 0) + 1
        limit = per_class.get(parts[1])
        if limit is None or n <= limit:
            kept.append(m)
    return kept


def cifar10_store(train_per_class: int | None = None, test_per_class: int | None = None, log=_log,
                  held_out_per_class: int = 0) -> Path:
    """The prepared 32x32 CIFAR-10 store under $ALEXNET_CACHE/stores (prepared here the first time).

    train_per_class / test_per_class: the first N images of each class of the split (None: all).
    held_out_per_class: the last N of each class's training images (of those kept) become a "val" split,
        the held-out training batch that cuda-convnet's methodology chooses epochs on; the mean image and
        the PCA then come from the rest.
    """
    from alexnet.data.prepare import prepare_store

    limits = {"train": train_per_class, "test": test_per_class}
    name = "cifar10" + "".join(f"-{split}{n}" for split, n in limits.items() if n is not None)
    name += f"-heldout{held_out_per_class}" if held_out_per_class else ""
    store = cache_dir() / "stores" / name
    if (store / "meta.json").is_file():
        return store
    source = resolve_source(CIFAR10)
    log(f"preparing {source} into {store} (once) ...")
    if train_per_class is None and test_per_class is None and not held_out_per_class:
        prepare_store(source, store, size=32, progress=False)
        return store
    # The extracted subset sits at a fixed path beside the store, so an interrupted prepare resumes (the
    # store records its source's path); it is removed once the store is complete.
    extracted = store.with_name(store.name + ".source")
    shutil.rmtree(extracted, ignore_errors=True)
    with tarfile.open(source) as archive:
        archive.extractall(extracted, members=_subset_members(archive, limits), filter="data")
    root = extracted / "cifar10"
    if held_out_per_class:
        hold_out(root, held_out_per_class)
    prepare_store(root, store, size=32, progress=False)
    shutil.rmtree(extracted, ignore_errors=True)
    return store


def hold_out(root: Path, per_class: int) -> None:
    """Move the last `per_class` training images of each class (file-name order) to root/val/<class>/."""
    for folder in sorted((root / "train").iterdir()):
        files = sorted(folder.iterdir())
        if len(files) <= per_class:
            raise ValueError(f"{folder}: {len(files)} training images, cannot hold out {per_class}")
        target = root / "val" / folder.name
        target.mkdir(parents=True)
        for f in files[-per_class:]:
            f.rename(target / f.name)
