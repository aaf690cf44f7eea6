"""The fused ReLU + LRN + max-pool operators alone, forward and backward, on the paper's conv1 and conv2 maps
(batch 128), in both layouts and both precisions: milliseconds per call.

    python benchmarks/lrn_pool.py     # under the allocator the `alexnet` command uses (see allocator.py)
"""

from __future__ import annotations

import statistics
import time

import torch

from alexnet.models.lrn import PAPER_LRN, cpp_kernel_available

SHAPES = {"conv1": ((128, 96, 55, 55), 2), "conv2": ((128, 256, 27, 27), 2)}


def timed(fn, repeats: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    if not cpp_kernel_available():
        raise SystemExit("the C++ LRN kernel is not built here")
    ops = torch.ops.alexnet_lrn
    params = (PAPER_LRN.size, PAPER_LRN.multiplier, PAPER_LRN.beta, PAPER_LRN.k, True, 3, 2)
    print(f"{'maps':6} {'layout':14} {'dtype':9} {'forward ms':>10} {'backward ms':>11}")
    for name, (shape, groups) in SHAPES.items():
        for layout in ("nchw", "channels_last"):
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(shape).to(dtype)
                if layout == "nchw":
                    x = x.contiguous()
                    forward, backward, extra = ops.pool_forward, ops.pool_backward, ()
                    if groups != 1:  # the plain-layout kernel normalises one tower per call: towers as images
                        x = x.reshape(shape[0] * groups, shape[1] // groups, *shape[2:])
                else:
                    x = x.contiguous(memory_format=torch.channels_last)
                    forward, backward, extra = ops.pool_forward_nhwc, ops.pool_backward_nhwc, (groups,)
                y, argmax = forward(x, *params, *extra)
                grad = torch.randn_like(y)
                f = timed(lambda forward=forward, x=x, extra=extra: forward(x, *params, *extra))
                b = timed(lambda backward=backward, x=x, grad=grad, argmax=argmax, extra=extra:
                          backward(grad, x, argmax, *params, *extra))
                print(f"{name:6} {layout:14} {str(dtype).split('.')[1]:9} {f:10.1f} {b:11.1f}")


if __name__ == "__main__":
    main()
