"""`alexnet features`: the last hidden layer's activations (fc7 after ReLU) of a whole split.

Section 6.1 compares images by the Euclidean distance of their 4096-d fc7 vectors. This module computes
those vectors once per (network, store, split) with the centre crop, normalised as in training, and keeps
them on disk as a float16 ``.npy`` that is memory-mapped on reading (8 KiB an image: 74 MiB for Imagenette's
train split, about 10 GB for ImageNet's). Beside it ``NAME.json`` holds the file names, labels, classes and
what the vectors were computed from; a later call with the same checkpoint (same bytes), the same store
and split and the same precision reuses the file instead of recomputing it.

The features are written through a hidden temporary file and renamed when complete; the description is
written after that. A killed extraction therefore leaves no file that looks complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.data.loader import EvalBatches
from alexnet.data.store import Store
from alexnet.distributed import resolve_device
from alexnet.engine import autocast_context, progress_bar
from alexnet.errors import CheckpointError
from alexnet.fsutil import temporary_name, write_json
from alexnet.models.build import TrainedNetwork, load_trained
from alexnet.paths import resolve_store

FORMAT = "alexnet-features-1"


@dataclass
class Features:
    """fc7 vectors of one split with what identifies each row."""

    vectors: np.ndarray  # (N, D) float16, memory-mapped
    labels: np.ndarray  # (N,) int64
    files: list[str]  # the source file of each row
    classes: list[str]
    class_names: list[str]
    path: Path
    checkpoint_sha256: str = ""  # what the vectors were computed with
    reused: bool = False


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a checkpoint is identified by what it holds, not by its name). A command
    that needs the features of two splits hashes the checkpoint once: the digest is kept while the file's
    size and modification time stay the same."""
    st = os.stat(path)
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def store_digest(store: Store, split: str) -> str:
    """Identifies a split's content: the store description and the split's file list and labels."""
    h = hashlib.sha256()
    for part in (store.root / "meta.json", store.root / split / "files.json", store.root / split / "labels.npy"):
        h.update(part.read_bytes())
    return h.hexdigest()


def feature_layer(model: nn.Module):
    """The model's `forward_features` (images -> last hidden layer after its nonlinearity)."""
    forward = getattr(model, "forward_features", None)
    if forward is None:
        raise ValueError(f"{type(model).__name__} has no forward_features: features need the paper family, "
                         "torchvision's AlexNet or the CIFAR nets")
    return forward


@torch.no_grad()
def fc7(trained: TrainedNetwork, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """fc7 vectors (B, D) float32 of uint8 images (B, 3, S, S), centre crop, on the model's device."""
    device = next(trained.model.parameters()).device
    forward = feature_layer(trained.model)
    trained.model.eval()
    with autocast_context(device, precision):
        return forward(trained.augmenter(device).center(images.to(device))).float()


def default_path(checkpoint: str | os.PathLike, store: Store, split: str) -> Path:
    from alexnet.analysis.sections import analysis_dir

    return analysis_dir(checkpoint) / f"features-{store.root.name}-{split}.npy"


def _description_path(path: Path) -> Path:
    return path.with_suffix(".json")


def open_features(path: str | os.PathLike) -> Features:
    """A features file written by `compute_features`, memory-mapped."""
    path = Path(path)
    desc_path = _description_path(path)
    if not path.is_file() or not desc_path.is_file():
        raise FileNotFoundError(f"{path} (with {desc_path.name}) not found; write it with `alexnet features`")
    desc = json.loads(desc_path.read_text())
    if desc.get("format") != FORMAT:
        raise CheckpointError(f"{desc_path} is not a features description of this package ({FORMAT})")
    vectors = np.load(path, mmap_mode="r")
    if vectors.shape[0] != len(desc["labels"]):
        raise CheckpointError(f"{path} holds {vectors.shape[0]} rows but {desc_path.name} describes "
                              f"{len(desc['labels'])}; delete both and run `alexnet features` again")
    return Features(vectors, np.asarray(desc["labels"], dtype=np.int64), desc["files"], desc["classes"],
                    desc["class_names"], path, desc["checkpoint_sha256"])


def _is_current(path: Path, key: dict) -> bool:
    desc_path = _description_path(path)
    if not path.is_file() or not desc_path.is_file():
        return False
    try:
        desc = json.loads(desc_path.read_text())
    except json.JSONDecodeError:
        return False
    return desc.get("format") == FORMAT and all(desc.get(k) == v for k, v in key.items())


def compute_features(
    checkpoint: str | os.PathLike,
    store: str | os.PathLike,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 128,
    precision: str = "fp32",
    device: str = "auto",
    progress: bool = True,
    trained: TrainedNetwork | None = None,
) -> Features:
    """fc7 vectors of every image of a store's split (default: train), reused when still current."""
    st = Store.open(resolve_store(str(store)))
    split = split or st.train_split
    path = Path(out) if out is not None else default_path(checkpoint, st, split)
    key = {"checkpoint_sha256": file_digest(checkpoint), "store_sha256": store_digest(st, split),
           "split": split, "precision": precision}
    if _is_current(path, key):
        found = open_features(path)
        found.reused = True
        return found
    dev = resolve_device(device)
    trained = trained or load_trained(checkpoint, dev)
    if trained.mean.shape[-1] != st.size:
        raise ValueError(f"{checkpoint} expects {trained.mean.shape[-1]}px stored images; {st.root} holds "
                         f"{st.size}px: prepare the images at that size (alexnet prepare --size)")
    batches = EvalBatches.from_store(st, split, batch_size=batch_size, device=dev, workers=2)
    labels = st.labels(split)
    width = _width(trained)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(labels), width))
        bar = progress_bar(len(batches), 0, f"fc7 {split}", progress)
        row = 0
        for images, _ in batches:
            v = fc7(trained, images, precision)
            vectors[row : row + len(v)] = v.cpu().numpy().astype(np.float16)
            row += len(v)
            bar.update(1)
        bar.close()
        vectors.flush()
        del vectors
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    desc = {"format": FORMAT, **key, "checkpoint": str(checkpoint), "store": str(st.root),
            "model": trained.config.model.name, "layer": "fc7 after ReLU (forward_features), centre crop",
            "shape": [len(labels), width], "classes": list(st.classes), "class_names": list(st.class_names),
            "files": st.files(split), "labels": labels.astype(int).tolist()}
    write_json(_description_path(path), desc, indent=None)
    return open_features(path)


def _width(trained: TrainedNetwork) -> int:
    crop = trained.config.data.crop
    device = next(trained.model.parameters()).device
    with torch.no_grad():
        return int(feature_layer(trained.model)(torch.zeros(1, 3, crop, crop, device=device)).shape[1])


def pixel_vectors(store: Store, split: str, side: int = 32, progress: bool = False) -> np.ndarray:
    """Raw pixels as the baseline of Section 6.1's comparison: each stored image averaged down to
    side x side (area averaging), RGB 0..255, flattened: (N, 3 * side * side) float32."""
    images = store.images(split)
    out = np.empty((len(images), 3 * side * side), dtype=np.float32)
    step = 256
    bar = progress_bar(-(-len(images) // step), 0, f"pixels {split}", progress)
    for a in range(0, len(images), step):
        batch = torch.from_numpy(np.ascontiguousarray(images[a : a + step])).float()
        out[a : a + len(batch)] = torch.nn.functional.adaptive_avg_pool2d(batch, side).flatten(1).numpy()
        bar.update(1)
    bar.close()
    return out


def format_features(features: Features) -> str:
    n, d = features.vectors.shape
    how = "reused (checkpoint and store unchanged)" if features.reused else "computed"
    return (f"{features.path}: {n} x {d} fc7 vectors, float16 ({features.vectors.nbytes / 2**20:.1f} MiB), "
            f"{how}; files, labels and classes in {_description_path(features.path).name}")
