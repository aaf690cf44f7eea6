"""The CUDA LRN kernels (Triton), run on the CPU by Triton's interpreter against the float64 formula.

The interpreter reads TRITON_INTERPRET when the kernels are defined, so the check runs in a child process
that sets it before importing them; the kernels themselves are the ones a GPU runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import json, os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from alexnet.models.lrn import lrn_formula_backward, lrn_formula
    from alexnet.models.lrn_triton import TritonLRN
    torch.manual_seed(0)
    cases = [((2, 7, 5, 6), True, 0.75, 5, "float32"), ((1, 12, 3, 3), False, 0.6, 3, "float32"),
             ((3, 5, 17, 16), True, 0.75, 5, "float32"), ((2, 9, 4, 4), True, 0.75, 5, "bfloat16")]
    out = []
    for shape, relu, beta, size, dtype in cases:
        x = (torch.randn(shape) * 3).to(getattr(torch, dtype)).requires_grad_()
        g = torch.randn(shape).to(x.dtype)
        y = TritonLRN.apply(x, size, 1e-2, beta, 2.0, relu)
        (gx,) = torch.autograd.grad(y, x, g)
        x64 = x.detach().double()
        want_y = lrn_formula(x64, size, 1e-2, beta, 2.0, relu)
        want_g = lrn_formula_backward(g.double(), x64, size, 1e-2, beta, 2.0, relu)
        out.append({"case": [shape, relu, beta, size, dtype], "dtype": str(y.dtype),
                    "forward": (y.double() - want_y).abs().max().item(),
                    "backward": (gx.double() - want_g).abs().max().item(),
                    "scale": want_y.abs().max().item()})
    print(json.dumps(out))
""")


def test_triton_lrn_matches_the_float64_formula_forward_and_backward():
    pytest.importorskip("triton", reason="this torch build has no Triton (CPU-only wheels)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for r in results:
        half = r["case"][-1] == "bfloat16"
        assert r["dtype"] == ("torch.bfloat16" if half else "torch.float32"), r  # output in the input's dtype
        tolerance = 2 ** -7 * r["scale"] if half else 2e-6  # bf16 rounding of the result, else float32 error
        assert r["forward"] <= tolerance and r["backward"] <= tolerance, r
