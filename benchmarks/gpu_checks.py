"""Correctness on a CUDA device: the GPU paths against the CPU reference, printed as max errors.

Run by benchmarks/gpu.sh on a machine with a GPU; exits non-zero when a check fails.
"""

from __future__ import annotations

import sys

import torch

from alexnet.models import create_model
from alexnet.models.lrn import local_response_norm, lrn_max_pool


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    failures = []

    def check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
        err = (got.double().cpu() - want.double().cpu()).abs().max().item()
        ok = err <= tol
        failures.extend([] if ok else [name])
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max abs error {err:.3g} (tolerance {tol:g})")

    torch.manual_seed(0)
    x = (torch.randn(8, 96, 55, 55, dtype=torch.float64) * 30).requires_grad_()
    g = torch.randn(8, 96, 27, 27, dtype=torch.float64)
    want = lrn_max_pool(x, backend="cpp")
    (want_grad,) = torch.autograd.grad(want, x, g)
    xc = x.detach().float().to(dev).requires_grad_()
    got = lrn_max_pool(xc)
    (got_grad,) = torch.autograd.grad(got, xc, g.float().to(dev))
    check("ReLU+LRN+pool forward, CUDA fp32 vs CPU fp64", got, want, 1e-4)
    check("ReLU+LRN+pool backward, CUDA fp32 vs CPU fp64", got_grad, want_grad, 1e-4)
    bf = local_response_norm(xc.detach().bfloat16(), relu=True)
    check("LRN bf16 on CUDA vs CPU fp64", bf, local_response_norm(x.detach(), relu=True), 0.5)
    # The hand-written Triton kernels (ALEXNET_LRN_CUDA=triton) against the same float64 reference.
    from alexnet.models.lrn_triton import TritonLRN

    got = torch.nn.functional.max_pool2d(TritonLRN.apply(xc, 5, 1e-4, 0.75, 2.0, True), 3, 2)
    (got_grad,) = torch.autograd.grad(got, xc, g.float().to(dev))
    check("Triton ReLU+LRN (+pool) forward, fp32 vs CPU fp64", got, want, 1e-4)
    check("Triton ReLU+LRN (+pool) backward, fp32 vs CPU fp64", got_grad, want_grad, 1e-4)

    model = create_model("alexnet").eval()
    images = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        ref = model(images)
        out = model.to(dev)(images.to(dev))
    check("paper net logits, CUDA fp32 vs CPU fp32", out, ref, 1e-3)
    print("all GPU checks passed" if not failures else f"FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
