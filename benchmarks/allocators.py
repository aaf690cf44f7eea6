"""The allocator choice, measured: glibc, tuned glibc, mimalloc (pip) with several settings, jemalloc.

Each candidate runs the same two workloads in a fresh process: the paper net's training step beside
torchvision's (``model_step.py``, fp32, batch 128) and our augmented batches streamed from the
memory-mapped store (``data_pipeline.py``), and reports images/s and the process's peak RSS.
jemalloc is measured only where the system has it (``apt-get install libjemalloc2``); it is the
comparison, not what users get.

    .venv/bin/python benchmarks/allocators.py --store /tmp/stores/imagenette --json > results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from alexnet.allocator import mimalloc_library  # noqa: E402

HERE = Path(__file__).resolve().parent
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
JEMALLOC_CONF = "oversize_threshold:1,background_thread:false,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def candidates() -> dict[str, dict[str, str]]:
    mi = str(mimalloc_library())
    out = {
        "glibc": {},
        "glibc, mmap threshold 32 MB, no trim": {"MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                                                  "MALLOC_TRIM_THRESHOLD_": str(1 << 40)},
        "mimalloc (defaults)": {"LD_PRELOAD": mi},
        "mimalloc, purge delay 1 s, eager commit": {"LD_PRELOAD": mi, "MIMALLOC_PURGE_DELAY": "1000",
                                                    "MIMALLOC_ARENA_EAGER_COMMIT": "1"},
        "mimalloc, purge delay 10 s, eager commit (alexnet's)": {"LD_PRELOAD": mi, "MIMALLOC_PURGE_DELAY": "10000",
                                                                 "MIMALLOC_ARENA_EAGER_COMMIT": "1"},
        "mimalloc, never purge, eager commit": {"LD_PRELOAD": mi, "MIMALLOC_PURGE_DELAY": "-1",
                                                "MIMALLOC_ARENA_EAGER_COMMIT": "1"},
    }
    if JEMALLOC.is_file():
        out["jemalloc (system package), no decay"] = {"LD_PRELOAD": str(JEMALLOC), "MALLOC_CONF": JEMALLOC_CONF}
    return out


def run(script: str, args: list[str], extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF") and not k.startswith(
        ("MIMALLOC_", "MALLOC_"))}
    env.update(extra)
    out = subprocess.run([sys.executable, str(HERE / script), *args, "--json"], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="prepared Imagenette store (256 px)")
    p.add_argument("--rounds", type=int, default=3, help="model_step rounds per candidate")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = {}
    for name, env in candidates().items():
        step = run("model_step.py", ["--rounds", str(args.rounds), "--steps", "2"], env)
        data = run("data_pipeline.py", ["--store", args.store, "--batches", "15", "--skip-reference"], env)
        results[name] = {
            "env": env,
            "train_images_per_s": step["train"]["images_per_s"]["alexnet"],
            "train_torchvision_images_per_s": step["train"]["images_per_s"]["torchvision"],
            "train_ratio": step["train"]["ratio"],
            "model_step_peak_rss_mb": step["peak_rss_mb"],
            "pipeline_memmap_images_per_s": data["ours"]["memmap"]["images_per_s"],
            "pipeline_in_memory_images_per_s": data["ours"]["in_memory"]["images_per_s"],
            "pipeline_peak_rss_mb": data["peak_rss_mb"],
        }
        if not args.json:
            r = results[name]
            tv = r["train_torchvision_images_per_s"]
            print(f"{name:42s} train {r['train_images_per_s']:6.1f} img/s (tv {tv:5.1f},"
                  f" ratio {r['train_ratio']:.2f}) peak {r['model_step_peak_rss_mb']:6.0f} MB | pipeline memmap "
                  f"{r['pipeline_memmap_images_per_s']:6.0f} in-memory {r['pipeline_in_memory_images_per_s']:6.0f} "
                  f"img/s peak {r['pipeline_peak_rss_mb']:6.0f} MB", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
