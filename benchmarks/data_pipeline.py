"""Input pipeline throughput: our augmented training batches vs torchvision's reference pipeline.

One run on the same Imagenette training images (issue: "feed it fast"):

- ours: batches from a prepared store (``alexnet prepare imagenette2-224.tar.gz --out STORE``), in
  two modes: the whole split in memory (``in_memory=True``) and streamed from the memory-mapped
  shards by background threads; each batch then augmented as in the paper (random 224 crop,
  flip, PCA lighting, minus the mean image) into float32 (B,3,224,224).
- theirs: ``ImageFolder`` on the original JPEGs with Resize(256) + RandomCrop(224) +
  RandomHorizontalFlip + ToTensor + Normalize, ``DataLoader`` with the same number of workers.

Targets: ours >= 3x theirs, and >= 4x the model's training rate (``--model-rate``; the paper net trained
at about 40 img/s fp32 on the 2-core development machine, docs/performance.md), so data never waits.

Run as ``make`` runs Python, with jemalloc preloaded when installed (docs/performance.md), e.g.::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 .venv/bin/python benchmarks/data_pipeline.py \\
        --store /tmp/stores/imagenette
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from alexnet.config import AugmentConfig
from alexnet.data.augment import Augmenter
from alexnet.data.loader import TrainBatches
from alexnet.data.store import Store
from alexnet.seeding import batch_generator

DEFAULT_ARCHIVE = Path(os.environ.get("ALEXNET_DATA", "../shared/data")) / "imagenette2-224.tar.gz"
PAPER_NET_RATE = 40.0  # img/s, paper net training fp32 on the 2-core CPU (docs/performance.md)


def extract_train(archive: Path, dest: Path) -> Path:
    """Extract the archive's train split once into ``dest``; returns the ImageFolder root."""
    marker = dest / ".extracted"
    if not marker.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if "/train/" in m.name]
            if not members:
                raise FileNotFoundError(f"{archive} holds no */train/* entries; pass the Imagenette archive")
            tar.extractall(dest, members=members, filter="data")
        marker.touch()
    roots = sorted(dest.glob("*/train"))
    if not roots:
        raise FileNotFoundError(f"no */train folder under {dest}; delete {dest} and run again")
    return roots[0]


def images_per_second(batches: Iterable[torch.Tensor], count: int, warmup: int) -> float:
    """Images/s over ``count`` batches after ``warmup`` untimed ones (workers started, caches warm)."""
    it: Iterator[torch.Tensor] = iter(batches)
    for _ in range(warmup):
        next(it)
    images = 0
    start = time.perf_counter()
    for _ in range(count):
        images += next(it).shape[0]
    return images / (time.perf_counter() - start)


def ours(store: Store, in_memory: bool, batch_size: int, workers: int, device: str) -> Iterator[torch.Tensor]:
    """Augmented float32 training batches, epoch after epoch, the paper's recipe (Section 4.1)."""
    batches = TrainBatches.from_store(
        store, batch_size=batch_size, seed=0, device=device, in_memory=in_memory, workers=workers
    )
    aug = Augmenter(AugmentConfig(), store.mean, store.eigvals, store.eigvecs, device=device)
    for epoch in itertools.count():
        for k, images, _ in batches.epoch(epoch):
            yield aug.train(images, batch_generator(0, epoch, k, device))


def theirs(root: Path, batch_size: int, workers: int) -> Iterator[torch.Tensor]:
    """torchvision's reference ImageNet training transform on the original JPEGs."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.RandomCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root), transform=tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
    )
    while True:
        for images, _ in loader:
            yield images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=Path("/tmp/stores/imagenette"), help="prepared store")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="imagenette2-224.tar.gz")
    parser.add_argument("--extract-to", type=Path, default=Path("/tmp/alexnet-bench/imagenette"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="loader workers, the same for both")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--model-rate", type=float, default=PAPER_NET_RATE, help="model training img/s to compare against"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--skip-reference", action="store_true", help="time only our pipeline")
    args = parser.parse_args()

    store = Store.open(args.store)
    root = None if args.skip_reference else extract_train(args.archive, args.extract_to)
    rates = {}
    for mode, in_memory in (("in_memory", True), ("memmap", False)):
        start = time.perf_counter()
        batches = ours(store, in_memory, args.batch_size, args.workers, args.device)
        first = next(batches)  # includes loading the split for in_memory
        setup = time.perf_counter() - start
        rate = images_per_second(batches, args.batches, max(0, args.warmup - 1))
        rates[mode] = {"images_per_s": rate, "setup_s": setup, "shape": list(first.shape)}
    reference = (
        None if root is None else images_per_second(theirs(root, args.batch_size, args.workers), args.batches, args.warmup)
    )
    result = {
        "images": "imagenette2-224 train",
        "store": str(args.store),
        "store_size": store.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "jemalloc": "jemalloc" in os.environ.get("LD_PRELOAD", ""),
        "cpu_count": os.cpu_count(),
        "torchvision_images_per_s": reference,
        "ours": rates,
        "model_rate": args.model_rate,
        "ratio_vs_torchvision": {m: r["images_per_s"] / reference for m, r in rates.items()} if reference else {},
        "ratio_vs_model": {m: r["images_per_s"] / args.model_rate for m, r in rates.items()},
        "peak_rss_mb": sum(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        / 1024,
    }
    result["targets_met"] = all(v >= 3 for v in result["ratio_vs_torchvision"].values()) and all(
        v >= 4 for v in result["ratio_vs_model"].values()
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    threads = torch.get_num_threads()
    print(f"Imagenette train, batch {args.batch_size}, {args.workers} workers, {threads} threads")
    print(f"  torchvision reference (JPEG, Resize 256, RandomCrop 224, flip): {reference:8.0f} img/s")
    for mode, r in rates.items():
        print(
            f"  ours, {mode:9s} (crop, flip, PCA light, minus mean): {r['images_per_s']:8.0f} img/s"
            f"  = {result['ratio_vs_torchvision'][mode]:.1f}x torchvision (target 3x),"
            f" {result['ratio_vs_model'][mode]:.1f}x model {args.model_rate:.0f} img/s (target 4x)"
        )
    print(f"  model rate {args.model_rate:.0f} img/s (the paper net trained at ~40 img/s fp32 when measured)")
    print(f"  targets met: {result['targets_met']}; jemalloc preloaded: {result['jemalloc']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
