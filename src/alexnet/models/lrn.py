"""Local response normalisation (Section 3.3) as the paper's network computed it, with a fast CPU kernel.

The paper prints

    b_i = a_i / (k + alpha * sum_{j = max(0, i - n/2)}^{min(N - 1, i + n/2)} a_j^2) ^ beta

with k = 2, n = 5, alpha = 1e-4, beta = 0.75. The code that trained the paper's network (cuda-convnet, and
cuda-convnet2 after it) divides the configured scale by the window before it uses it, so the network
behind the paper's numbers multiplied the sum of squares by 1e-4 / 5 = 2e-5; Caffe's LRN layer and
``torch.nn.LocalResponseNorm`` divide the same way. :class:`LRNParams` names which reading a layer uses
(``divide_by_size``) and hands the kernels one number, the multiplier of the sum (:attr:`LRNParams.multiplier`):
``PAPER_LRN`` is the 2012 code's reading (the default of the paper's network), ``PRINTED_LRN`` the printed
formula read literally (five times the normalisation; ``model.lrn_alpha = "printed"``).

The functions below (:func:`local_response_norm`, :func:`lrn_max_pool`) take that multiplier as ``alpha``;
the modules take an :class:`LRNParams`.

Two implementations give the same numbers:

* a fused C++ kernel (``csrc/lrn.cpp``), compiled on first use with torch's extension builder and cached
  under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); CPU tensors, float32, float64 and
  bfloat16 (accumulating in float32);
* a pure-PyTorch autograd Function, used on every other device, and on the CPU when no compiler is
  available. ``ALEXNET_LRN=torch`` forces it, ``ALEXNET_LRN=cpp`` makes a failed build an error.
  On CUDA it is compiled by torch.compile; ``ALEXNET_LRN_CUDA=triton`` runs hand-written Triton kernels
  instead (``lrn_triton.py``).

Both save only the layer's input for the backward pass and recompute the denominator there, so the layer
costs no activation memory beyond the ReLU output it shares. ``relu=True`` fuses the preceding ReLU.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import native


@dataclass(frozen=True)
class LRNParams:
    """The constants of the normalisation and how ``alpha`` is read.

    ``size`` (n), ``alpha`` (the configured scale), ``beta`` and ``k`` as in Section 3.3. With
    ``divide_by_size`` (cuda-convnet's, Caffe's and torch's reading) the sum of squares is multiplied by
    ``alpha / size``; without it (the printed formula read literally) by ``alpha``.
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0
    divide_by_size: bool = True

    @property
    def multiplier(self) -> float:
        """What the sum of squares is multiplied by: the kernels' ``alpha``."""
        return self.alpha / self.size if self.divide_by_size else self.alpha

    def describe(self) -> str:
        reading = f"{self.alpha:g} / {self.size}" if self.divide_by_size else f"{self.alpha:g}"
        return f"n={self.size}, alpha={reading}, beta={self.beta:g}, k={self.k:g}"


# Section 3.3's "k = 2, n = 5, alpha = 10^-4, and beta = 0.75", with alpha divided by n as the 2012 code did.
PAPER_LRN = LRNParams()
# The same constants read as printed: the sum of squares times 1e-4, five times the code's normalisation.
PRINTED_LRN = LRNParams(divide_by_size=False)

_SOURCE = native.CSRC / "lrn.cpp"


_BUILD_ERROR: list[str] = []  # why the C++ kernel could not be built, once it was tried


def lrn_path(build: bool = True) -> tuple[str, str]:
    """Which LRN runs on CPU tensors and why: ("cpp" | "torch" | "not built", reason). Builds the kernel
    if needed, unless `build` is False and nothing has built it yet (a GPU run need not compile it).
    On CUDA the pure-PyTorch Function always runs (fused by torch.compile when the run compiles)."""
    mode = os.environ.get("ALEXNET_LRN", "auto")
    if mode == "torch":
        return "torch", "ALEXNET_LRN=torch forces the pure-PyTorch LRN"
    if not build and cpp_kernel_available.cache_info().currsize == 0:
        return "not built", "nothing ran on the CPU yet; `alexnet info --device cpu` builds and reports it"
    if cpp_kernel_available():
        return "cpp", f"the fused C++ kernel ({_SOURCE.name}), built for this CPU and cached by torch"
    return "torch", f"the C++ kernel could not be built: {_BUILD_ERROR[0] if _BUILD_ERROR else 'unknown'}"


@functools.cache
def cpp_kernel_available() -> bool:
    """Build (once per machine and source version) and load the C++ kernel; False if that is impossible."""
    mode = os.environ.get("ALEXNET_LRN", "auto")
    if mode not in ("auto", "cpp", "torch"):
        raise ValueError(f"ALEXNET_LRN={mode!r}: expected 'auto', 'cpp' or 'torch'")
    if mode == "torch":
        return False
    try:
        native.build("alexnet_lrn", _SOURCE)
    except Exception as err:  # a missing compiler or ninja must not stop training: fall back.
        _BUILD_ERROR.append(native.build_failure(err))
        if mode == "cpp":
            raise RuntimeError(f"building the LRN kernel from {_SOURCE} failed: {err}") from err
        warnings.warn(
            f"alexnet: the fast LRN kernel could not be built ({type(err).__name__}: {err}); "
            "using the pure-PyTorch LRN (same numbers, about 2-3x slower on CPU). Install a C++ compiler "
            "and ninja to get the fast kernel, or set ALEXNET_LRN=torch to silence this.",
            stacklevel=2,
        )
        return False
    _register_fake_kernels()
    _register_autograd()
    return True


def _register_fake_kernels() -> None:
    """Shapes, dtypes and layouts of the C++ operators' outputs without running them (torch.library fake
    kernels), so that torch.compile(fullgraph=True) and torch.export trace through the fused LRN."""
    plain, nhwc = torch.contiguous_format, torch.channels_last

    def pooled(x: torch.Tensor, pool_k: int, pool_s: int, layout: torch.memory_format):
        n, c, h, w = x.shape
        shape = (n, c, (h - pool_k) // pool_s + 1, (w - pool_k) // pool_s + 1)
        return (x.new_empty(shape).contiguous(memory_format=layout),
                x.new_empty(shape, dtype=torch.uint8).contiguous(memory_format=layout))

    def fake(name: str, fn) -> None:
        torch.library.register_fake(f"alexnet_lrn::{name}")(fn)

    fake("forward", lambda x, size, alpha, beta, k, relu: torch.empty_like(x, memory_format=plain))
    fake("backward", lambda grad, x, size, alpha, beta, k, relu: torch.empty_like(x, memory_format=plain))
    fake("pool_forward", lambda x, size, alpha, beta, k, relu, pool_k, pool_s: pooled(x, pool_k, pool_s, plain))
    fake("pool_backward", lambda grad, x, argmax, *params: torch.empty_like(x, memory_format=plain))
    fake("pool_forward_nhwc",
         lambda x, size, alpha, beta, k, relu, pool_k, pool_s, groups: pooled(x, pool_k, pool_s, nhwc))
    fake("pool_backward_nhwc", lambda grad, x, argmax, *params: torch.empty_like(x, memory_format=nhwc))


def _register_autograd() -> None:
    """The operators' gradients, registered with torch.library (traceable by torch.compile and torch.export,
    where an autograd.Function around the operators was not): the LRN's backward operator for `forward`, and
    for the fused ReLU + LRN + max-pool the pooling's argmax (a uint8 output, never differentiated) routes the
    gradient back through its backward operator."""
    ops = torch.ops.alexnet_lrn

    def setup_lrn(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.params = inputs[1:]

    def lrn_backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ops.backward(grad, x, *ctx.params), *(None for _ in ctx.params)

    def setup_pool(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0], output[1])
        ctx.params = inputs[1:]

    def pool_backward(op):
        def backward(ctx, grad, _argmax_grad):
            x, argmax = ctx.saved_tensors
            return op(grad, x, argmax, *ctx.params), *(None for _ in ctx.params)

        return backward

    torch.library.register_autograd("alexnet_lrn::forward", lrn_backward, setup_context=setup_lrn)
    torch.library.register_autograd("alexnet_lrn::pool_forward", pool_backward(ops.pool_backward),
                                    setup_context=setup_pool)
    torch.library.register_autograd("alexnet_lrn::pool_forward_nhwc", pool_backward(ops.pool_backward_nhwc),
                                    setup_context=setup_pool)


def _window_sum(t: torch.Tensor, half: int) -> torch.Tensor:
    """Sum over the channel window [i - half, i + half], clipped at the edges, of a (N, C, ...) tensor."""
    zeros = t.new_zeros((t.shape[0], half, *t.shape[2:]))
    padded = torch.cat([zeros, t, zeros], dim=1)
    channels = t.shape[1]
    out = padded[:, 0:channels].clone()
    for d in range(1, 2 * half + 1):
        out += padded[:, d : d + channels]
    return out


def _wide(x: torch.Tensor) -> torch.Tensor:
    # Powers in half precision lose too much: float16/bfloat16 are computed in float32.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def lrn_formula(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool) -> torch.Tensor:
    """The formula in tensor ops; half-precision input is computed in float32 and handed back as given."""
    a = _wide(x).clamp_min(0) if relu else _wide(x)
    scale = k + alpha * _window_sum(a * a, size // 2)
    return (a * scale.pow(-beta)).to(x.dtype)


def lrn_formula_backward(grad: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                         relu: bool) -> torch.Tensor:
    """grad_a_m = g_m s_m^-beta - 2 alpha beta a_m sum_{i in window(m)} g_i a_i s_i^(-beta-1)."""
    a = _wide(x).clamp_min(0) if relu else _wide(x)
    g = grad.to(a.dtype)
    scale = k + alpha * _window_sum(a * a, size // 2)
    pw = scale.pow(-beta)
    grad_a = g * pw - (2 * alpha * beta) * a * _window_sum(g * a * pw / scale, size // 2)
    if relu:
        grad_a = grad_a * (x > 0)
    return grad_a.to(x.dtype)


@functools.cache
def _compiled(fn):
    """On a GPU the formula's dozen elementwise passes are fused into a few kernels by torch.compile.

    Measured on an H200 (benchmarks/results/gpu-h200-run3): compiling this Function's forward and backward
    separately beat compiling the whole LRN + pooling graph and letting autograd derive the backward
    (bf16 training 0.52x vs 0.40x torchvision's rate; fp32 0.65x vs 0.59x); eager was 0.32x / 0.49x."""
    return torch.compile(fn, dynamic=None)


def _math(fn, x: torch.Tensor):
    use_compiled = x.device.type == "cuda" and os.environ.get("ALEXNET_LRN_COMPILE", "1") != "0"
    return _compiled(fn) if use_compiled else fn


class _TorchLRN(torch.autograd.Function):
    """Plain tensor ops (compiled on CUDA); the reference the C++ kernel is tested against."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, relu):
        ctx.save_for_backward(x)
        ctx.params = (size, alpha, beta, k, relu)
        return _math(lrn_formula, x)(x, size, alpha, beta, k, relu)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _math(lrn_formula_backward, x)(grad, x, *ctx.params), None, None, None, None, None


class _CppLRN:
    """The C++ operator (its gradient registered with torch.library: see `_register_autograd`)."""

    @staticmethod
    def apply(x, size, alpha, beta, k, relu):
        return torch.ops.alexnet_lrn.forward(x, size, alpha, beta, k, relu)


def local_response_norm(x: torch.Tensor, size: int = PAPER_LRN.size, alpha: float = PAPER_LRN.multiplier,
                        beta: float = PAPER_LRN.beta, k: float = PAPER_LRN.k, relu: bool = False,
                        backend: str = "auto", groups: int = 1) -> torch.Tensor:
    """The LRN over channels of a (N, C, ...) tensor; ``relu=True`` applies max(x, 0) first.

    ``alpha`` multiplies the window's sum of squares as given (the default is the paper network's
    1e-4 / 5; pass ``LRNParams.multiplier`` for another reading).

    ``backend``: "auto" (C++ kernel on CPU when it builds, else PyTorch), "cpp" or "torch".
    ``groups``: the channels form this many towers, each normalised on its own (the window never crosses).
    """
    _check_args(x, size, groups)
    if groups != 1:
        y = local_response_norm(_per_group(x, groups), size, alpha, beta, k, relu, backend)
        return y.reshape(x.shape)
    return _function(x, backend).apply(x, size, alpha, beta, k, relu)


def _function(x: torch.Tensor, backend: str):
    """The autograd Function for `x`: the C++ kernel on the CPU, the Triton kernels on CUDA when
    ALEXNET_LRN_CUDA=triton, else the tensor formula (compiled on CUDA)."""
    if _use_cpp(x, backend):
        return _CppLRN
    if backend != "torch" and x.device.type == "cuda" and cuda_lrn_path()[0] == "triton":
        from alexnet.models.lrn_triton import TritonLRN  # imports triton: only for a CUDA tensor

        return TritonLRN
    return _TorchLRN


def cuda_lrn_path() -> tuple[str, str]:
    """Which LRN runs on CUDA tensors and why: ("compile" | "eager" | "triton", reason)."""
    mode = os.environ.get("ALEXNET_LRN_CUDA", "compile")
    if mode not in ("compile", "triton"):
        raise ValueError(f"ALEXNET_LRN_CUDA={mode!r}: expected 'compile' or 'triton'")
    if mode == "triton":
        return "triton", "ALEXNET_LRN_CUDA=triton: the Triton kernels of lrn_triton.py"
    if os.environ.get("ALEXNET_LRN_COMPILE", "1") == "0":
        return "eager", "ALEXNET_LRN_COMPILE=0: the tensor formula, not compiled"
    return "compile", "the tensor formula fused by torch.compile (the default; ALEXNET_LRN_CUDA=triton for the kernels)"


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor laid out (N, H, W, C) in memory, and not also plain contiguous (one pixel, one channel)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@torch.compiler.assume_constant_result
def _kernel_ready() -> bool:
    """`cpp_kernel_available()`, which torch.compile takes as a constant rather than tracing its build."""
    return cpp_kernel_available()


def _use_cpp(x: torch.Tensor, backend: str) -> bool:
    if backend not in ("auto", "cpp", "torch"):
        raise ValueError(f"LRN backend {backend!r}: expected 'auto', 'cpp' or 'torch'")
    use = (
        backend != "torch"
        and x.device.type == "cpu"
        and not torch.onnx.is_in_onnx_export()  # the exporter cannot translate the custom op
        and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
        and _kernel_ready()
    )
    if backend == "cpp" and not use:
        raise RuntimeError(f"the C++ LRN kernel cannot run on a {x.device.type} {x.dtype} tensor")
    return use


def _per_group(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, ...) -> (N * groups, C / groups, ...): each group's maps become an image of their own."""
    if groups == 1:
        return x
    return x.reshape(x.shape[0] * groups, x.shape[1] // groups, *x.shape[2:])


def _check_size(size: int) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"LRN size {size} must be a positive odd number (the window is centred on i)")


def _check_args(x: torch.Tensor, size: int, groups: int) -> None:
    _check_size(size)
    if x.dim() < 2:
        raise ValueError(f"LRN expects a (N, C, ...) tensor, got shape {tuple(x.shape)}")
    if groups < 1 or x.shape[1] % groups:
        raise ValueError(f"LRN groups={groups} does not divide the {x.shape[1]} channels")


def lrn_max_pool(x: torch.Tensor, size: int = PAPER_LRN.size, alpha: float = PAPER_LRN.multiplier,
                 beta: float = PAPER_LRN.beta, k: float = PAPER_LRN.k, relu: bool = True, pool_kernel: int = 3,
                 pool_stride: int = 2, backend: str = "auto", groups: int = 1) -> torch.Tensor:
    """[ReLU ->] LRN -> max pooling (Sections 3.3-3.4), fused on the CPU; equals the three layers in turn.

    ``alpha`` and ``groups`` as in :func:`local_response_norm`.
    """
    _check_args(x, size, groups)
    if is_channels_last(x) and _use_cpp(x, backend):
        return torch.ops.alexnet_lrn.pool_forward_nhwc(x, size, alpha, beta, k, relu, pool_kernel, pool_stride,
                                                       groups)[0]
    if groups != 1:
        y = lrn_max_pool(_per_group(x, groups), size, alpha, beta, k, relu, pool_kernel, pool_stride, backend)
        return y.reshape(x.shape[0], x.shape[1], *y.shape[2:])
    if _use_cpp(x, backend):
        return torch.ops.alexnet_lrn.pool_forward(x, size, alpha, beta, k, relu, pool_kernel, pool_stride)[0]
    y = _function(x, backend).apply(x, size, alpha, beta, k, relu)
    return F.max_pool2d(y, pool_kernel, pool_stride)


class LocalResponseNorm(nn.Module):
    """Section 3.3's response normalisation; the default is the paper network's (n 5, alpha 1e-4 / 5, beta
    0.75, k 2).

    Args:
        params: the constants and the reading of alpha (:class:`LRNParams`).
        relu: apply ReLU to the input first (fused; equal to ``nn.ReLU`` followed by this layer).
        groups: number of towers the channels are split into; each is normalised on its own.
    """

    def __init__(self, params: LRNParams = PAPER_LRN, relu: bool = False, groups: int = 1) -> None:
        super().__init__()
        _check_size(params.size)
        self.params, self.relu, self.groups = params, relu, groups
        self.size, self.alpha, self.beta, self.k = params.size, params.multiplier, params.beta, params.k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.relu, groups=self.groups)

    def extra_repr(self) -> str:
        relu = ", relu=True" if self.relu else ""
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return f"{self.params.describe()}{relu}{groups}"


def torch_reference_lrn(x: torch.Tensor, p: LRNParams = PAPER_LRN) -> torch.Tensor:
    """torch.nn.functional's LRN (which divides its alpha by n) set to `p`: for comparisons."""
    return F.local_response_norm(x, p.size, p.multiplier * p.size, p.beta, p.k)


class LRNMaxPool(nn.Module):
    """ReLU (optional), the LRN and overlapping max pooling as one layer: the conv1/conv2 blocks.

    Numerically the same as ``nn.ReLU``, :class:`LocalResponseNorm` and ``nn.MaxPool2d`` in turn; on the CPU
    one fused kernel does all three without materialising the normalised maps.
    """

    def __init__(self, params: LRNParams = PAPER_LRN, relu: bool = True, pool_kernel: int = 3,
                 pool_stride: int = 2, groups: int = 1) -> None:
        super().__init__()
        _check_size(params.size)
        self.params, self.relu = params, relu
        self.size, self.alpha, self.beta, self.k = params.size, params.multiplier, params.beta, params.k
        self.pool_kernel, self.pool_stride, self.groups = pool_kernel, pool_stride, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn_max_pool(x, self.size, self.alpha, self.beta, self.k, self.relu, self.pool_kernel,
                            self.pool_stride, groups=self.groups)

    def extra_repr(self) -> str:
        return (f"{self.params.describe()}, relu={self.relu}, pool={self.pool_kernel}/{self.pool_stride}, "
                f"groups={self.groups}")
