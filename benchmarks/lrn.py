"""LRN alone, forward + backward, on the paper's two LRN inputs (batch 128): our kernels vs torch's layer.

    python benchmarks/lrn.py          # CPU, 2 threads; run with jemalloc preloaded as `make bench` does
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from alexnet.models.lrn import local_response_norm, lrn_max_pool


def timed(fn, x, grad, repeats):
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        y = fn(x)
        y.backward(grad(y))
        times.append(time.perf_counter() - start)
        x.grad = None
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = {
        "C++ ReLU+LRN+max-pool (the model's)": lambda t: lrn_max_pool(t, backend="cpp"),
        "C++ LRN": lambda t: local_response_norm(t, backend="cpp"),
        "pure-PyTorch LRN (fallback)": lambda t: local_response_norm(t, backend="torch"),
        "torch.nn.functional LRN (the same constants)": lambda t: F.local_response_norm(t, 5, 1e-4, 0.75, 2.0),
    }
    for shape in ((128, 96, 55, 55), (128, 256, 27, 27)):
        x = (torch.randn(shape) * 20).relu().requires_grad_()
        print(f"input {'x'.join(map(str, shape))}, forward + backward, median of {args.repeats}:")
        for name, fn in variants.items():
            ms = timed(fn, x, lambda y: torch.ones_like(y), args.repeats)
            print(f"  {name:40s} {ms:7.1f} ms")


if __name__ == "__main__":
    main()
