"""LRN: the formula of Section 3.3 at float64, both implementations, values and gradients, both readings of
alpha (the 2012 code's alpha / n, the default, and the printed alpha)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from alexnet.models.lrn import (
    PAPER_LRN,
    PRINTED_LRN,
    LocalResponseNorm,
    LRNMaxPool,
    LRNParams,
    cpp_kernel_available,
    local_response_norm,
    lrn_max_pool,
    torch_reference_lrn,
)

BACKENDS = ["torch", "cpp"]


def formula(a: torch.Tensor, n=5, alpha=1e-4 / 5, beta=0.75, k=2.0) -> torch.Tensor:
    """b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta, channel by channel; by
    default with the constants of the paper's network as cuda-convnet computed them (alpha 1e-4 / n)."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        s = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert cpp_kernel_available(), "the C++ LRN kernel must build in the test environment (gcc + ninja)"


def activations(*shape, scale=40.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) * scale).abs()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [1, 2, 3, 7, 96])
def test_values_match_formula_including_edges(backend, channels):
    a = activations(2, channels, 5, 4)
    torch.testing.assert_close(local_response_norm(a, backend=backend), formula(a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_hyperparameters(backend):
    a = activations(2, 9, 3, 3)
    got = local_response_norm(a, size=3, alpha=1e-3, beta=0.5, k=1.0, backend=backend)
    torch.testing.assert_close(got, formula(a, n=3, alpha=1e-3, beta=0.5, k=1.0), rtol=1e-12, atol=1e-12)


def test_the_two_readings_of_alpha():
    assert PAPER_LRN.multiplier == pytest.approx(2e-5) and PRINTED_LRN.multiplier == pytest.approx(1e-4)
    assert LRNParams(size=9, alpha=1e-3).multiplier == pytest.approx(1e-3 / 9)
    a = activations(2, 16, 4, 4)
    ours = local_response_norm(a)
    # torch's layer (and Caffe's) divide alpha by n as cuda-convnet did: the default is that computation
    torch.testing.assert_close(ours, F.local_response_norm(a, 5, 1e-4, 0.75, 2.0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours, torch_reference_lrn(a), rtol=1e-10, atol=1e-10)
    printed = local_response_norm(a, alpha=PRINTED_LRN.multiplier)
    torch.testing.assert_close(printed, formula(a, alpha=1e-4), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(printed, torch_reference_lrn(a, PRINTED_LRN), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(ours, printed, rtol=1e-3)  # five times the normalisation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("params", [PAPER_LRN, PRINTED_LRN], ids=["over-n", "printed"])
def test_paper_blocks_per_tower_match_float64_formula(backend, params):
    """conv1's block as the paper's network runs it: ReLU, LRN within each of two towers, 3/2 max pooling;
    the fused kernel ("cpp") and the fallback, values and gradients, against the formula with n 5, k 2,
    beta 0.75 and alpha 1e-4 / 5 (or the printed 1e-4)."""
    x = (torch.randn(2, 12, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(11)) * 60)
    x.requires_grad_()
    g = torch.randn(2, 12, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    a = torch.relu(x)
    alpha = 1e-4 / 5 if params.divide_by_size else 1e-4
    want = F.max_pool2d(torch.cat([formula(a[:, :6], alpha=alpha), formula(a[:, 6:], alpha=alpha)], 1), 3, 2)
    block = LRNMaxPool(params, relu=True, groups=2)
    got = lrn_max_pool(x, block.size, block.alpha, block.beta, block.k, relu=True, backend=backend, groups=2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0],
                               rtol=1e-10, atol=1e-12)
    if backend == "cpp":
        torch.testing.assert_close(block(x), want, rtol=1e-12, atol=1e-12)  # the module runs the kernel


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck(backend, relu):
    x = torch.randn(2, 7, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 30
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, relu=relu, backend=backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_matches_autograd_through_formula(backend):
    a = activations(2, 11, 3, 3, seed=3).requires_grad_()
    g = torch.randn(2, 11, 3, 3, dtype=torch.float64)
    (want,) = torch.autograd.grad(formula(a), a, g)
    (got,) = torch.autograd.grad(local_response_norm(a, backend=backend), a, g)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_cpp_matches_torch_in_float32_at_paper_scale():
    x = torch.randn(4, 96, 27, 27, generator=torch.Generator().manual_seed(4)) * 50
    x.requires_grad_()
    g = torch.randn(4, 96, 27, 27)
    ys = [local_response_norm(x, relu=True, backend=b) for b in BACKENDS]
    grads = [torch.autograd.grad(y, x, g)[0] for y in ys]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bfloat16_is_close_to_float32():
    x = torch.randn(2, 32, 8, 8) * 30
    ref = local_response_norm(x)
    for backend in BACKENDS:
        got = local_response_norm(x.bfloat16(), backend=backend)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_relu_equals_relu_then_lrn(backend):
    x = torch.randn(2, 9, 5, 5, dtype=torch.float64) * 20
    x.requires_grad_()
    g = torch.randn(2, 9, 5, 5, dtype=torch.float64)
    fused = local_response_norm(x, relu=True, backend=backend)
    plain = formula(torch.relu(x))
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(torch.autograd.grad(fused, x, g)[0], torch.autograd.grad(plain, x, g)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("pool_kernel", "pool_stride", "side"), [(3, 2, 13), (3, 2, 12), (2, 2, 11)])
def test_lrn_max_pool_equals_three_layers(backend, pool_kernel, pool_stride, side):
    x = torch.randn(3, 10, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 20
    x.requires_grad_()
    want = F.max_pool2d(formula(torch.relu(x)), pool_kernel, pool_stride)
    got = lrn_max_pool(x, relu=True, pool_kernel=pool_kernel, pool_stride=pool_stride, backend=backend)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])


@pytest.mark.parametrize(("channels", "pool_kernel", "pool_stride", "side"),
                         [(17, 3, 2, 11), (48, 3, 2, 11), (33, 4, 3, 11), (5, 1, 1, 11), (20, 3, 2, 23)])
def test_lrn_max_pool_ties_and_any_window(channels, pool_kernel, pool_stride, side):
    """The C++ kernel pools channel vectors (padded to a multiple of its vector width) with the window known at
    compile time only for 3/2 and 2/2: other widths and windows, and ties, where the gradient goes to the first
    maximum of the window in row-major order as in torch, must give torch's numbers; 23 x 24 maps span three
    of the kernel's 256-position tiles."""
    g = torch.Generator().manual_seed(channels)
    x = torch.randint(-1, 3, (2, channels, side, side + 1), generator=g).double().requires_grad_()  # many ties
    want = F.max_pool2d(formula(torch.relu(x)), pool_kernel, pool_stride)
    got = lrn_max_pool(x, relu=True, pool_kernel=pool_kernel, pool_stride=pool_stride, backend="cpp")
    torch.testing.assert_close(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0])


def test_lrn_max_pool_gradcheck_cpp():
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 30
    assert torch.autograd.gradcheck(lambda t: lrn_max_pool(t, backend="cpp"), (x.requires_grad_(),))


@pytest.mark.parametrize("relu", [False, True])
def test_lrn_max_pool_propagates_nan(relu):
    """A NaN passes the fused ReLU (as through torch.relu), spreads over its channel window, and wins the
    pooling over numbers and over an earlier NaN of the same window; without the ReLU its gradient goes where
    the formula's goes (through the ReLU the two mask a NaN input's own gradient differently)."""
    x = torch.ones(1, 4, 5, 5)
    x[0, 1, 2, 2] = float("nan")
    x[0, 3, 0, 0] = x[0, 3, 0, 1] = float("nan")  # two NaNs in one window
    for t in (x, x.bfloat16()):
        y = lrn_max_pool(t, relu=relu, backend="cpp")
        ref = lrn_max_pool(t, relu=relu, backend="torch")
        assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.isnan(y).any()
    if relu:
        return
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.rand(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    lrn_max_pool(a, relu=relu, backend="cpp").backward(g)
    lrn_max_pool(b, relu=relu, backend="torch").backward(g)
    assert torch.equal(torch.isnan(a.grad), torch.isnan(b.grad))
    torch.testing.assert_close(torch.nan_to_num(a.grad), torch.nan_to_num(b.grad))


def test_modules_and_argument_errors():
    x = activations(1, 8, 6, 6, dtype=torch.float32)
    torch.testing.assert_close(LocalResponseNorm()(x), local_response_norm(x))
    torch.testing.assert_close(LRNMaxPool()(x), lrn_max_pool(x))
    torch.testing.assert_close(LocalResponseNorm(PRINTED_LRN)(x), local_response_norm(x, alpha=1e-4))
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNorm(LRNParams(size=4))
    with pytest.raises(ValueError, match="backend"):
        local_response_norm(x, backend="fast")
    with pytest.raises(ValueError, match=r"\(N, C"):
        local_response_norm(torch.ones(5))


def test_env_forces_pure_pytorch_fallback():
    code = (
        "import torch; from alexnet.models.lrn import cpp_kernel_available, local_response_norm;"
        "assert not cpp_kernel_available();"
        "x = torch.arange(20.0, dtype=torch.float64).reshape(1, 5, 2, 2) * 9;"
        "print(repr(float(local_response_norm(x).sum())))"
    )
    env = {**os.environ, "ALEXNET_LRN": "torch"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    x = torch.arange(20.0, dtype=torch.float64).reshape(1, 5, 2, 2) * 9
    assert float(out.stdout) == pytest.approx(float(formula(x).sum()), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_normalise_each_tower_on_its_own(backend):
    x = activations(2, 12, 7, 7, seed=7).requires_grad_()
    towers = [formula(x[:, :6]), formula(x[:, 6:])]
    torch.testing.assert_close(local_response_norm(x, groups=2, backend=backend), torch.cat(towers, 1))
    pooled = lrn_max_pool(x, relu=False, groups=2, backend=backend)
    torch.testing.assert_close(pooled, F.max_pool2d(torch.cat(towers, 1), 3, 2))
    # Changing tower 2's maps leaves tower 1's output alone, at the boundary channel too.
    x2 = x.detach().clone()
    x2[:, 6:] *= 3
    assert torch.equal(local_response_norm(x2, groups=2, backend=backend)[:, :6],
                       local_response_norm(x.detach(), groups=2, backend=backend)[:, :6])
    with pytest.raises(ValueError, match="divide"):
        local_response_norm(x, groups=5)


def test_reporting_the_lrn_path_does_not_build_the_kernel_unless_asked():
    code = ("from alexnet.models.lrn import cpp_kernel_available, lrn_path; "
            "print(lrn_path(build=False)[0], cpp_kernel_available.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["not", "built", "0"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("channels", "groups", "pool_kernel", "pool_stride", "side"),
                         [(12, 2, 3, 2, 9), (96, 2, 3, 2, 13), (20, 1, 2, 2, 8), (7, 1, 3, 2, 6), (10, 2, 3, 1, 7)])
def test_channels_last_kernel_equals_the_plain_one(dtype, channels, groups, pool_kernel, pool_stride, side):
    """Channels-last maps go through their own kernel (every tower in one call, output channels-last): values
    and gradients equal the plain layout's, and the float64 formula's, NaN included."""
    x = (torch.randn(2, channels, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 60)
    x[1, channels // 2, 1, 2] = float("nan")
    x = x.to(dtype)
    plain = x.clone().requires_grad_()
    nhwc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    args = dict(relu=True, pool_kernel=pool_kernel, pool_stride=pool_stride, groups=groups, backend="cpp")
    want, got = lrn_max_pool(plain, **args), lrn_max_pool(nhwc, **args)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
    g = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).to(dtype)
    want.backward(g)
    got.backward(g.contiguous(memory_format=torch.channels_last))
    tol = 1e-12 if dtype == torch.float64 else 1e-2  # window sums of a pooled gradient added in another order
    torch.testing.assert_close(nhwc.grad, plain.grad, equal_nan=True, rtol=tol, atol=tol)
    if dtype == torch.float64:
        per = channels // groups
        a = torch.relu(x)
        ref = torch.cat([formula(a[:, t * per:(t + 1) * per]) for t in range(groups)], 1)
        torch.testing.assert_close(got, F.max_pool2d(ref, pool_kernel, pool_stride), equal_nan=True)


@pytest.mark.parametrize("size", [3, 5, 7])
@pytest.mark.parametrize(("channels", "groups", "beta"),
                         [(96, 2, 0.75), (40, 1, 0.75), (66, 2, 0.75), (80, 1, 0.75), (96, 2, 0.5)])
def test_channels_last_kernel_every_window_and_tower_width(size, channels, groups, beta):
    """float32 in both layouts (on AVX-512 machines the channels-last one is hand-vectorised for windows of 3 and
    5: specialised for towers of 1-4, 6 or 8 vectors and beta 0.75, generic otherwise, e.g. 80 channels = 5
    vectors, or beta 0.5): equal values, close gradients, and within float32 of the float64 formula."""
    x = torch.randn(3, channels, 11, 11, generator=torch.Generator().manual_seed(size)) * 60
    x[2, 1, 3, 4] = float("inf")
    plain = x.clone().requires_grad_()
    nhwc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    args = dict(size=size, alpha=1e-4 / size, beta=beta, relu=True, groups=groups, backend="cpp")
    want, got = lrn_max_pool(plain, **args), lrn_max_pool(nhwc, **args)
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
    per = channels // groups
    a = torch.relu(x.double())
    ref = torch.cat([formula(a[:, t * per:(t + 1) * per], n=size, alpha=1e-4 / size, beta=beta)
                     for t in range(groups)], 1)
    torch.testing.assert_close(got.double(), F.max_pool2d(ref, 3, 2), equal_nan=True, rtol=2e-6, atol=1e-6)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(7))
    want.backward(g)
    got.backward(g.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc.grad, plain.grad, equal_nan=True, rtol=1e-5, atol=1e-6)


def test_channels_last_kernel_refuses_what_it_cannot_do():
    x = torch.randn(1, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="divide"):
        lrn_max_pool(x, groups=4)
    y, argmax = torch.ops.alexnet_lrn.pool_forward_nhwc(x, 5, 2e-5, 0.75, 2.0, True, 3, 2, 2)
    with pytest.raises(RuntimeError, match="argmax"):
        torch.ops.alexnet_lrn.pool_backward_nhwc(torch.ones_like(y), x, argmax.float(), 5, 2e-5, 0.75, 2.0, True,
                                                 3, 2, 2)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_compile_and_export_trace_through_the_fused_kernel(layout):
    """The C++ operators have fake kernels: dynamo sees the paper's network as one graph, torch.export
    exports it, and a compiled training step (forward and backward through the kernel) matches eager."""
    from alexnet.models import create_model

    assert cpp_kernel_available()
    torch.manual_seed(0)
    model = create_model("alexnet", 10).eval().to(memory_format=layout)
    x = torch.randn(2, 3, 224, 224).contiguous(memory_format=layout)
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))

    model.train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    eager_loss = model(x).square().mean()
    eager_loss.backward()
    eager_grad = model.conv1.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks
    compiled_loss = compiled(x).square().mean()
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss)
    torch.testing.assert_close(model.conv1.weight.grad, eager_grad)
