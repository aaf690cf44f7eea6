"""Input pipeline throughput alone: our augmented training batches vs torchvision's reference pipeline.

The same measurement `alexnet benchmark` makes, with more knobs: the store in memory as well as
memory-mapped, another batch size or worker count, another device, or only our pipeline
(``--skip-reference``, as ``benchmarks/allocators.py`` uses it). The model rate to compare against is
measured by ``alexnet benchmark``; pass it with ``--model-rate`` to print the ratio.

    .venv/bin/python benchmarks/data_pipeline.py --store ~/.cache/alexnet/stores/imagenette --json
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from alexnet.benchmark import extract_train, our_pipeline, rate, reference_pipeline
from alexnet.data.store import Store
from alexnet.info import environment
from alexnet.paths import resolve_source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="prepared Imagenette store")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="loader workers, the same for both")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-rate", type=float, default=None, help="model training img/s to compare with")
    parser.add_argument("--skip-reference", action="store_true", help="time only our pipeline")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()

    store = Store.open(args.store)
    rates = {}
    for mode, in_memory in (("in_memory", True), ("memmap", False)):
        start = time.perf_counter()
        batches = our_pipeline(store, args.batch_size, args.workers, in_memory, args.device)
        next(batches)  # includes loading the split for in_memory
        setup = time.perf_counter() - start
        rates[mode] = {"images_per_s": rate(batches, args.batches, warmup=1), "setup_s": setup}
    reference = None
    if not args.skip_reference:
        with tempfile.TemporaryDirectory(prefix="alexnet-pipeline-") as tmp:
            root = extract_train(resolve_source("imagenette2-224"), Path(tmp))
            reference = rate(reference_pipeline(root, args.batch_size, args.workers), args.batches)
    peak = sum(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    result = {
        "environment": environment(args.device),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "torchvision_images_per_s": reference,
        "ours": rates,
        "ratio_vs_torchvision": {m: r["images_per_s"] / reference for m, r in rates.items()} if reference else {},
        "ratio_vs_model": {m: r["images_per_s"] / args.model_rate for m, r in rates.items()} if args.model_rate
        else {},
        "peak_rss_mb": peak / 1024,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Imagenette train, batch {args.batch_size}, {args.workers} workers, allocator "
          f"{result['environment']['allocator']}")
    if reference:
        print(f"  torchvision reference (JPEG, Resize 256, RandomCrop 224, flip): {reference:8.0f} img/s")
    for mode, r in rates.items():
        ratio = result["ratio_vs_torchvision"].get(mode)
        print(f"  ours, {mode:9s}: {r['images_per_s']:8.0f} img/s" + (f" = {ratio:.1f}x torchvision" if ratio else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
