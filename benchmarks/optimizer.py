"""The update step alone on the paper network's 61 million parameters: the paper's rule fused in one C++ pass,
the same rule as tensor operations, and torch.optim.SGD (foreach and per-parameter loops): ms per step.

    python benchmarks/optimizer.py     # under the allocator the `alexnet` command uses (see allocator.py)
"""

from __future__ import annotations

import torch

from alexnet.models import create_model
from alexnet.optim import PaperSGD, fused_sgd_available
from lrn_pool import timed  # this folder is on the path of a script run from it


def main() -> None:
    if not fused_sgd_available():
        raise SystemExit("the fused update could not be built on this machine")
    torch.manual_seed(0)
    params = list(create_model("alexnet").parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    print(f"{sum(p.numel() for p in params):,} parameters, {torch.get_num_threads()} threads")
    optimizers = {
        "PaperSGD, fused": PaperSGD(params, lr=0.01, fused=True),
        "PaperSGD, tensor operations": PaperSGD(params, lr=0.01, fused=False),
        "torch.optim.SGD (foreach)": torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4),
        "torch.optim.SGD (for-loop)": torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4,
                                                      foreach=False),
    }
    for name, opt in optimizers.items():
        print(f"{name:30s} {timed(opt.step, repeats=9):7.1f} ms")


if __name__ == "__main__":
    main()
