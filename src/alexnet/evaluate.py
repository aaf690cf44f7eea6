"""Top-1 / top-5 error with the centre crop or the ten crops, ensembles, per-class accuracy, predict.

Section 4.1: at test time the network "extracts five 224x224 patches (the four corner patches and the
center patch) as well as their horizontal reflections (hence ten patches in all), and averages the
predictions made by the network's softmax layer on the ten patches". Section 6 averages the softmax
of several CNNs (the "5 CNNs" and "7 CNNs*" rows); an ensemble here averages the (crop-averaged) softmax
outputs of every checkpoint given. Under torchrun each process evaluates a disjoint part of the split and
the counts are summed: every image is counted exactly once.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch

from alexnet.data.decode import load_images
from alexnet.data.loader import EvalBatches
from alexnet.data.store import Store
from alexnet.distributed import init_distributed, resolve_device, shutdown_distributed
from alexnet.engine import Counts, autocast_context, predict
from alexnet.models.build import TrainedNetwork, load_trained
from alexnet.paths import resolve_store


class SizedBatches(Protocol):
    """What `ensemble_probs` reads: (uint8 images, labels) batches that know how many they are
    (`alexnet.data.loader.EvalBatches`, or a list of tuples)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


def ensemble_probs(
    models: Sequence[TrainedNetwork],
    batches: SizedBatches,
    device: torch.device,
    ten_crop: bool = False,
    precision: str = "fp32",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities averaged over `models` (and over the ten crops when asked) for every image of
    `batches` (uint8 images, labels); returns (probs (N, C), labels (N,)) of this process's part."""
    total, labels = None, None
    autocast = autocast_context(device, precision)
    for loaded in models:
        aug = loaded.augmenter(device)
        views = aug.ten_crop if ten_crop else aug.center
        outputs = list(
            predict(loaded.model, batches, views, autocast=autocast, progress=progress, total=len(batches))
        )
        probs = torch.cat([p for p, _ in outputs]) if outputs else torch.zeros(0, len(loaded.classes))
        these = torch.cat([y for _, y in outputs]) if outputs else torch.zeros(0, dtype=torch.int64)
        total = probs if total is None else total + probs
        labels = these
    if total is None or labels is None:  # no models: nothing to average
        raise ValueError("ensemble_probs needs at least one network")
    return total / len(models), labels


def _check_compatible(models: Sequence[TrainedNetwork], store: Store) -> None:
    for loaded in models:
        if loaded.classes != list(store.classes):
            raise ValueError(
                f"{loaded.path} was trained on classes {loaded.classes[:3]}... but store {store.root} has "
                f"{list(store.classes)[:3]}...; evaluate on a store with the same classes"
            )
        if loaded.mean.shape[-1] != store.size:
            raise ValueError(
                f"{loaded.path} expects {loaded.mean.shape[-1]}px stored images; {store.root} "
                f"holds {store.size}px"
            )


def evaluate_checkpoints(
    checkpoints: Sequence[str | os.PathLike[str]],
    store: str | os.PathLike[str],
    split: str | None = None,
    ten_crop: bool = False,
    batch_size: int = 128,
    precision: str = "fp32",
    device: str = "auto",
    per_class_csv: str | os.PathLike[str] | None = None,
    in_memory: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1 and top-5 error of one checkpoint or the ensemble of several on a store's split.

    Returns a dict: checkpoints, split, images, ten_crop, top1_error, top5_error, per_class (list of
    {class, name, images, top1_accuracy, top5_accuracy}). Exact under torchrun (counts summed).
    """
    process = init_distributed(device)
    try:
        st = Store.open(resolve_store(str(store)))
        split = split or st.eval_split
        models = [load_trained(p, process.device) for p in checkpoints]
        _check_compatible(models, st)
        batches = EvalBatches.from_store(
            st,
            split,
            in_memory=in_memory,
            batch_size=batch_size,
            rank=process.rank,
            world_size=process.world_size,
            device=process.device,
            workers=2,
        )
        probs, labels = ensemble_probs(
            models, batches, process.device, ten_crop, precision, progress and process.is_main
        )
        counts = Counts.zeros(st.num_classes)
        counts.add(probs, labels)
        counts = counts.all_reduce()
    finally:
        shutdown_distributed(process)
    per_class = [
        {
            "class": c,
            "name": n,
            "images": int(t),
            "top1_accuracy": float(h1) / max(int(t), 1),
            "top5_accuracy": float(h5) / max(int(t), 1),
        }
        for c, n, t, h1, h5 in zip(
            st.classes, st.class_names, counts.total, counts.top1, counts.top5, strict=True
        )
    ]
    if per_class_csv is not None and process.is_main:
        with open(per_class_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(per_class[0]))
            writer.writeheader()
            writer.writerows(per_class)
    return {
        "checkpoints": [str(p) for p in checkpoints],
        "split": split,
        "images": counts.images,
        "ten_crop": ten_crop,
        "top1_error": counts.top1_error,
        "top5_error": counts.top5_error,
        "per_class": per_class,
        "is_main": process.is_main,
    }


def predict_files(
    checkpoints: list[str | os.PathLike[str]],
    images: Sequence[str | os.PathLike[str]],
    ten_crop: bool = False,
    top: int = 5,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """The `top` most probable classes, with names and probabilities, for each image file (Figure 4 left).

    Several checkpoints average their softmax outputs. Returns one dict per image:
    {"image": path, "predictions": [{"class": id, "name": name, "probability": p}, ...]}.
    """
    networks: list[TrainedNetwork | str | os.PathLike[str]] = list(checkpoints)  # (list is invariant)
    return predict_images(networks, images, ten_crop=ten_crop, top=top, device=device)


def predict_images(
    networks: TrainedNetwork | str | os.PathLike[str] | list[TrainedNetwork | str | os.PathLike[str]],
    images: Sequence[str | os.PathLike[str]],
    ten_crop: bool = False,
    top: int = 5,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """`predict_files` for networks in memory (`alexnet.from_pretrained`) or paths to them, one or several
    (an ensemble averages their softmax outputs); each network is moved to `device`."""
    dev = resolve_device(device)
    items = networks if isinstance(networks, list) else [networks]
    models = [n if isinstance(n, TrainedNetwork) else load_trained(n, dev) for n in items]
    for m in models:
        m.model.to(dev)
    first = models[0]
    for other in models[1:]:
        if other.classes != first.classes or other.mean.shape != first.mean.shape:
            raise ValueError(
                f"{other.path} and {first.path} were trained on different classes or image sizes"
            )
    pixels = load_images(images, first.mean.shape[-1]).to(dev)
    labels = torch.zeros(len(images), dtype=torch.int64)
    probs, _ = ensemble_probs(models, [(pixels, labels)], dev, ten_crop)
    return [{"image": str(path), "predictions": top_classes(p, first, top)}
            for path, p in zip(images, probs, strict=True)]


def top_classes(probs: torch.Tensor, trained: TrainedNetwork, top: int = 5) -> list[dict[str, Any]]:
    """The `top` most probable of one image's class probabilities (C,), most probable first:
    [{"class": id, "name": name, "probability": p}, ...]."""
    values, indices = probs.topk(min(top, len(probs)))
    return [{"class": trained.classes[i], "name": trained.class_names[i], "probability": float(v)}
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def format_predictions(results: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(r["image"])
        lines.extend(
            f"  {100 * p['probability']:6.2f}%  {p['name']} ({p['class']})" for p in r["predictions"]
        )
    return "\n".join(lines)


def format_evaluation(result: Mapping[str, Any]) -> str:
    crops = "ten crops" if result["ten_crop"] else "centre crop"
    n = len(result["checkpoints"])
    who = result["checkpoints"][0] if n == 1 else f"ensemble of {n} checkpoints"
    return (
        f"{who}, {result['split']} ({result['images']} images, {crops}): "
        f"top-1 error {100 * result['top1_error']:.2f}%, top-5 error {100 * result['top5_error']:.2f}%"
    )
