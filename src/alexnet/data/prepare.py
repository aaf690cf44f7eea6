"""`alexnet prepare`: decode every image once into the store (Section 2 of the paper).

Each image is decoded to RGB whatever its mode, its shorter side scaled to `size` (antialiased bilinear), and
the centre square cropped. Over the train split we accumulate, in float64, the per-pixel mean image (the
paper subtracts it) and the sums giving the 3x3 RGB covariance whose eigen-decomposition drives PCA colour
augmentation (Section 4.1). Pixel values are integers, so these sums are exact and the same in any order.

Work is split into shards of a fixed list of sorted entries; worker processes decode a shard, write it
atomically and then record its statistics under ``STORE/.work``. A rerun skips shards already recorded, so
a killed prepare resumes and produces a store byte-identical to an uninterrupted run. ``meta.json`` is
written last; the ``.work`` folder is removed after it.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from alexnet.data import labels as labels_mod
from alexnet.data.containers import Entry
from alexnet.data.decode import DEFAULT_MAX_PIXELS, Payload, decode_rgb, resize_center_crop
from alexnet.data.sources import Source, open_source
from alexnet.data.store import (
    ENCODINGS,
    SPLIT_ORDER,
    STORE_VERSION,
    atomic_write,
    write_json,
    write_npy,
    write_shard,
)
from alexnet.errors import BadImage, DataError
from alexnet.fsutil import remove_temporaries
from alexnet.paths import cache_dir, resolve_source

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024

# A shard of the plan: (split, index in the split, its entries).
_Shard = tuple[str, int, list[Entry]]
# (name, label index, payload or the error reading it) of each image of a shard, in order.
_ShardItem = tuple[str, int, Payload | Exception]
# What a worker gets: (out, split, index, items, size, encoding, max_pixels, whether to sum the statistics).
_ShardTask = tuple[Path, str, int, list[_ShardItem], int, str, int, bool]
# What it returns: (split, index, images kept, [(name, reason)] of those skipped).
_ShardResult = tuple[str, int, int, list[tuple[str, str]]]


def _init_worker(max_pixels: int) -> None:
    torch.set_num_threads(1)
    Image.MAX_IMAGE_PIXELS = max(max_pixels, DEFAULT_MAX_PIXELS)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", message="Palette images with Transparency")


def _work_path(out: Path, split: str, index: int) -> Path:
    return out / ".work" / f"{split}-{index:05d}.npz"


def _process_shard(task: _ShardTask) -> _ShardResult:
    """Decode one shard, write it, then record its statistics; returns (split, index, kept, skipped)."""
    out, split, index, items, size, encoding, max_pixels, with_stats = task
    images = np.empty((len(items), 3, size, size), dtype=np.uint8)
    kept_labels: list[int] = []
    kept_names: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name, label, payload in items:
        try:
            if isinstance(payload, Exception):
                raise BadImage(f"cannot read: {payload}")
            images[len(kept_names)] = resize_center_crop(decode_rgb(payload, max_pixels), size).numpy()
        except BadImage as e:
            skipped.append((name, str(e)))
            continue
        kept_labels.append(label)
        kept_names.append(name)
    images = images[: len(kept_names)]
    write_shard(out, split, index, images, encoding)
    sum_image = np.zeros((3, size, size), dtype=np.float64)
    sum_x = np.zeros(3, dtype=np.float64)
    sum_xx = np.zeros((3, 3), dtype=np.float64)
    if with_stats:
        for image in images:
            x = image.reshape(3, -1).astype(np.float64)
            sum_image += image
            sum_x += x.sum(axis=1)
            sum_xx += x @ x.T
    record: dict[str, Any] = {  # arrays; Any, as mypy matches a ** dict against savez's allow_pickle: bool too
        "labels": np.asarray(kept_labels, dtype=np.int64),
        "names": np.asarray(json.dumps(kept_names, ensure_ascii=False)),
        "skipped": np.asarray(json.dumps(skipped, ensure_ascii=False)),
        "sum_image": sum_image,
        "sum_x": sum_x,
        "sum_xx": sum_xx,
    }
    atomic_write(_work_path(out, split, index), lambda f: np.savez(f, **record))
    return split, index, len(kept_names), skipped


def _plan(source: Source, shard_size: int) -> list[_Shard]:
    shards: list[_Shard] = []
    for split in source.splits:
        entries = [e for e in source.entries if e.split == split]
        for i in range(math.ceil(len(entries) / shard_size)):
            shards.append((split, i, entries[i * shard_size : (i + 1) * shard_size]))
    return shards


def _stats_split(source: Source) -> str:
    """Mean image and RGB PCA come from the train split only (Section 4.1), or the first split if none."""
    return "train" if "train" in source.splits else source.splits[0]


def _check_resumable(out: Path, params: Mapping[str, Any]) -> None:
    """Refuse to mix a half-finished store made with other settings; record ours for the next run."""
    params_path = out / ".work" / "params.json"
    if params_path.is_file():
        previous = json.loads(params_path.read_text())
        if previous != params:
            changed = sorted(k for k in params if previous.get(k) != params[k])
            raise DataError(
                f"{out} holds an unfinished prepare made with different settings ({', '.join(changed)}); "
                f"rerun with the same settings to resume, or delete {out} to start again"
            )
        return
    (out / ".work").mkdir(parents=True, exist_ok=True)
    write_json(params_path, params)


def _summary_from_store(out: Path, wall_s: float, prepared: int) -> dict[str, Any]:
    meta = json.loads((out / "meta.json").read_text())
    report = json.loads((out / "report.json").read_text())
    splits = {
        split: {"images": info["images"], "classes": info["classes"], "shards": len(info["shards"])}
        for split, info in meta["splits"].items()
    }
    return {
        "store": str(out),
        "source": meta["source"],
        "size": meta["size"],
        "encoding": meta["encoding"],
        "classes": len(meta["classes"]),
        "splits": splits,
        "skipped": report["skipped"],
        "eigvals": meta["eigvals"],
        "eigvecs": meta["eigvecs"],
        "stats_split": meta["stats_split"],
        "wall_s": round(wall_s, 3),
        "images_per_s": round(prepared / wall_s, 1) if wall_s > 0 else None,
        "images_prepared_now": prepared,
    }


def _finish(out: Path, source: Source, plan: Sequence[_Shard], size: int, encoding: str, classes: list[str]) -> None:
    """Merge the shard records into labels, files, mean, PCA, report; then meta.json last."""
    splits_meta: dict[str, dict[str, Any]] = {}
    skipped = [{"split": None, "file": name, "reason": reason} for name, reason in source.problems]
    stats_split = _stats_split(source)
    sum_image = np.zeros((3, size, size), dtype=np.float64)
    sum_x = np.zeros(3, dtype=np.float64)
    sum_xx = np.zeros((3, 3), dtype=np.float64)
    split_order = sorted(source.splits, key=lambda s: SPLIT_ORDER.index(s))
    for split in split_order:
        records = [np.load(_work_path(out, s, i)) for s, i, _ in plan if s == split]
        split_labels = np.concatenate([r["labels"] for r in records])
        names = [n for r in records for n in json.loads(str(r["names"]))]
        bad = [(n, why) for r in records for n, why in json.loads(str(r["skipped"]))]
        skipped += [{"split": split, "file": n, "reason": why} for n, why in bad]
        if split == stats_split:
            for r in records:
                sum_image += r["sum_image"]
                sum_x += r["sum_x"]
                sum_xx += r["sum_xx"]
        listed = Counter(e.label for e in source.entries if e.split == split)
        kept = Counter(classes[i] for i in split_labels)
        empty = sorted(c for c in listed if kept[c] == 0)
        if empty:
            reasons = "; ".join(f"{n}: {why}" for n, why in bad[:3])
            raise DataError(
                f"split {split!r} ends up with no readable image for class(es) {', '.join(empty[:5])}"
                f" in {source.path} (first reasons: {reasons}); fix or remove those files and run again"
            )
        (out / split).mkdir(exist_ok=True)
        write_npy(out / split / "labels.npy", split_labels)
        write_json(out / split / "files.json", names)
        splits_meta[split] = {
            "images": len(names),
            "classes": len(kept),
            "shards": [len(r["labels"]) for r in records],
        }
    pixels = splits_meta[stats_split]["images"] * size * size
    mean_rgb = sum_x / pixels
    covariance = sum_xx / pixels - np.outer(mean_rgb, mean_rgb)
    eigvals, eigvecs = np.linalg.eigh(covariance)
    order = np.argsort(eigvals)[::-1]
    write_npy(out / "mean.npy", (sum_image / splits_meta[stats_split]["images"]).astype(np.float32))
    write_json(out / "report.json", {"skipped": skipped})
    meta = {
        "version": STORE_VERSION,
        "size": size,
        "encoding": encoding,
        "source": str(source.path),
        "splits": splits_meta,
        "classes": classes,
        "class_names": labels_mod.class_names(classes, source.names),
        "eigvals": eigvals[order].tolist(),
        "eigvecs": eigvecs[:, order].tolist(),
        "stats_split": stats_split,
    }
    write_json(out / "meta.json", meta)


def skip_kind(reason: str) -> str:
    """What a skip reason says without its per-file detail ("corrupt JPEG: Invalid SOS" -> "corrupt JPEG")."""
    return reason.split(":", 1)[0].strip()


def group_skips(skipped: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """{kind of reason: [files]} in order of first appearance, so a thousand side files read as one line."""
    groups: dict[str, list[str]] = {}
    for s in skipped:
        groups.setdefault(skip_kind(s["reason"]), []).append(s["file"])
    return groups


class _Write(Protocol):
    """`print`, or `tqdm.write` while a bar is shown."""

    def __call__(self, s: str, /, *, file: TextIO) -> object: ...


class SkipLog:
    """Prints the first few skipped files of each kind of reason as they happen; the rest are counted
    (the summary groups them and report.json lists every one)."""

    SHOWN = 3

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def report(self, name: str, reason: str, write: _Write) -> None:
        kind = skip_kind(reason)
        self.seen[kind] += 1
        if self.seen[kind] <= self.SHOWN:
            write(f"skipped {name}: {reason}", file=sys.stderr)
        elif self.seen[kind] == self.SHOWN + 1:
            write(f"(more files skipped for '{kind}': counted in the summary and report.json)", file=sys.stderr)


def prepare_store(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 256,
    workers: int | None = None,
    encoding: str = "raw",
    max_pixels: int | None = None,
    progress: bool = True,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> dict[str, Any]:
    """Decode `source` into a store at `out` (see `alexnet.data.store`); resumes an interrupted run.

    Args:
        source: a folder or archive path, or a name under $ALEXNET_DATA (``imagenette2-224``).
        out: the store folder. A complete store with the same settings is left as it is.
        size: shorter side after scaling, and the side of the centre crop (256 in the paper; 32 keeps
            CIFAR-10 native).
        workers: decoding processes (default: every available core).
        encoding: ``raw`` uint8 shards, or ``jpeg`` (quality 95) for stores too big for raw pixels.
        max_pixels: images declaring more pixels are skipped (default: Pillow's limit, 89,478,485).
        progress: show a tqdm bar (only on a terminal).
        shard_size: images per shard, the unit of parallel work and of resumption.

    Returns:
        The JSON summary: images and classes per split, skipped files with reasons, eigvals, eigvecs,
        wall_s and images_per_s.
    """
    start = time.perf_counter()
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not one of {ENCODINGS}")
    if size < 1 or shard_size < 1:
        raise ValueError(f"size {size} and shard_size {shard_size} must be positive")
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    workers = workers or len(os.sched_getaffinity(0))
    source_path = resolve_source(source).resolve()
    out = Path(out)
    params = {
        "source": str(source_path),
        "size": size,
        "encoding": encoding,
        "max_pixels": max_pixels,
        "shard_size": shard_size,
        "version": STORE_VERSION,
    }
    if (out / "meta.json").is_file():
        _check_same_store(out, json.loads((out / "meta.json").read_text()), params)
        return _summary_from_store(out, time.perf_counter() - start, 0)

    src = open_source(source_path)
    log = SkipLog()
    for name, reason in src.problems:
        log.report(name, reason, print)
    plan = _plan(src, shard_size)
    _check_resumable(out, params)
    remove_temporaries(out)
    for split in src.splits:
        (out / split).mkdir(exist_ok=True)
    todo = [(s, i, entries) for s, i, entries in plan if not _work_path(out, s, i).is_file()]
    total = len(src.entries)
    done_before = total - sum(len(entries) for _, _, entries in todo)
    bar = tqdm(total=total, initial=done_before, unit="img", desc="prepare", dynamic_ncols=True,
               disable=not progress or not sys.stderr.isatty())
    _decode_shards(out, src, todo, params, workers, log, bar)
    bar.close()
    _finish(out, src, plan, size, encoding, src.classes)
    shutil.rmtree(out / ".work")
    return _summary_from_store(out, time.perf_counter() - start, total - done_before)


def _check_same_store(out: Path, meta: Mapping[str, Any], params: Mapping[str, Any]) -> None:
    """A finished store at `out` is reused only when it holds the same source at the same size and encoding."""
    wanted = (params["source"], params["size"], params["encoding"])
    if (meta.get("source"), meta.get("size"), meta.get("encoding")) != wanted:
        raise DataError(
            f"{out} already holds a store of {meta.get('source')} at size {meta.get('size')} "
            f"({meta.get('encoding')}); pass another --out or delete it"
        )


def _decode_shards(out: Path, src: Source, todo: Sequence[_Shard], params: Mapping[str, Any], workers: int,
                   log: SkipLog, bar: tqdm) -> None:
    """Read the entries of the shards still to do in the source's own order, and hand each shard to a worker
    process as soon as all its images are read (compressed archives can only be read front to back)."""
    size, encoding, max_pixels = params["size"], params["encoding"], params["max_pixels"]
    class_index = labels_mod.class_index(src.classes)
    stats_split = _stats_split(src)
    shard_of = {(e.split, e.name): (s, i, pos) for s, i, entries in todo for pos, e in enumerate(entries)}
    pending = {(s, i): len(entries) for s, i, entries in todo}
    buffers: dict[tuple[str, int], list[tuple[int, str, int, Payload | Exception]]] = {key: [] for key in pending}
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(max_pixels,)) as pool:
        in_flight: deque[AsyncResult[_ShardResult]] = deque()

        def collect(block: bool) -> None:
            while in_flight and (block or in_flight[0].ready()):
                _, _, kept, bad = in_flight.popleft().get()
                for name, reason in bad:
                    log.report(name, reason, bar.write)
                bar.update(kept + len(bad))

        for entry, payload in src.read([e for _, _, entries in todo for e in entries]):
            split, index, pos = shard_of[(entry.split, entry.name)]
            key = (split, index)
            buffers[key].append((pos, entry.name, class_index[entry.label], payload))
            if len(buffers[key]) == pending[key]:
                items = [item[1:] for item in sorted(buffers.pop(key), key=lambda item: item[0])]
                task: _ShardTask = (out, key[0], key[1], items, size, encoding, max_pixels, key[0] == stats_split)
                in_flight.append(pool.apply_async(_process_shard, (task,)))
                collect(block=len(in_flight) > workers)
        collect(block=True)


def cached_store(name: str, source: str, size: int = 256) -> Path:
    """The store $ALEXNET_CACHE/stores/NAME, prepared once from `source` (a name under $ALEXNET_DATA, or a
    path) the first time it is asked for (FileNotFoundError, naming where it looked, if the source is absent)."""
    store = cache_dir() / "stores" / name
    if not (store / "meta.json").is_file():
        found = resolve_source(source)
        log.info(f"preparing {found} into {store} (once) ...")
        prepare_store(found, store, size=size)
    return store


def format_prepare_summary(summary: Mapping[str, Any]) -> str:
    """A short human-readable account of a prepare run."""
    lines = [
        f"store {summary['store']}  ({summary['size']}x{summary['size']}, {summary['encoding']}, "
        f"{summary['classes']} classes) from {summary['source']}"
    ]
    for split, info in summary["splits"].items():
        lines.append(
            f"  {split:<6} {info['images']:>9,} images  {info['classes']:>5} classes  {info['shards']} shards"
        )
    lines.append(
        f"  RGB PCA over {summary['stats_split']}: eigenvalues "
        + ", ".join(f"{v:.1f}" for v in summary["eigvals"])
    )
    groups = group_skips(summary["skipped"])
    lines.append(f"  skipped {len(summary['skipped'])} file(s)" + (
        f", by reason (every one in {summary['store']}/report.json):" if groups else ""))
    for reason, files in groups.items():
        more = f", ... ({len(files) - 3} more)" if len(files) > 3 else ""
        lines.append(f"    {len(files):>6,}  {reason}: {', '.join(files[:3])}{more}")
    rate = summary["images_per_s"]
    lines.append(
        f"  {summary['images_prepared_now']:,} images prepared in {summary['wall_s']:.1f} s"
        + (f" ({rate:,.0f} images/s)" if rate else "")
    )
    return "\n".join(lines)
