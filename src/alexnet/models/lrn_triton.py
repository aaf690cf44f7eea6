"""The paper's LRN (with the ReLU before it fused) as Triton kernels for CUDA, forward and backward.

    b_i = a_i / (k + alpha * sum_{j in window(i)} a_j^2) ^ beta,   a = max(x, 0) when fused with the ReLU

One program normalises a block of spatial positions of one image, walking the channels; each channel's
window of n squares is read again from the cache rather than kept in registers, so any odd n works. All
arithmetic is in float32 whatever the tensor's dtype. The backward pass,

    grad_a_m = g_m s_m^-beta - 2 alpha beta a_m sum_{i in window(m)} g_i a_i s_i^(-beta-1),

takes two kernels: the first writes t_i = g_i a_i s_i^(-beta-1) (float32), the second sums t over each
window and recomputes s_m; like the C++ kernel, only the layer's input is saved for it.

Which LRN runs on CUDA is chosen by ``ALEXNET_LRN_CUDA`` (`alexnet.models.lrn.cuda_lrn_path`): ``compile``
(the default, the tensor formula fused by torch.compile, measured on an H200) or ``triton`` (these
kernels; not yet timed on a GPU: benchmarks/gpu.sh times both). The kernels are checked against the
float64 formula on the CPU by Triton's interpreter (``TRITON_INTERPRET=1``, tests/test_lrn_triton.py).
"""

from __future__ import annotations

import torch
import triton  # bundled with torch's CUDA builds; this module is imported only where a kernel may run
import triton.language as tl


@triton.jit
def _load(x_ptr, offs, mask, RELU: tl.constexpr):
    a = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        a = tl.maximum(a, 0.0)
    return a

@triton.jit
def _scale(x_ptr, image, c, C, HW, pos, pmask, k, alpha, HALF: tl.constexpr, RELU: tl.constexpr,
           BLOCK: tl.constexpr):
    # s = k + alpha * (sum of squares over the channel window of c, clipped at the edges)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(2 * HALF + 1):
        cc = c - HALF + j
        inside = (cc >= 0) & (cc < C)
        a = _load(x_ptr, image + cc * HW + pos, pmask & inside, RELU)
        total += a * a
    return k + alpha * total

@triton.jit
def _block(C, HW, BLOCK: tl.constexpr):
    # This program's positions of one image (axis 0: the image, axis 1: the block), their mask, the image's offset.
    pos = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return pos, pos < HW, tl.program_id(0).to(tl.int64) * C * HW


@triton.jit
def _pow_neg(s, beta, THREE_QUARTERS: tl.constexpr):
    if THREE_QUARTERS:  # s^-0.75 = s^-0.5 * s^-0.25
        r = 1.0 / tl.sqrt(s)
        return r * tl.sqrt(r)
    return tl.exp2(-beta * tl.log2(s))

@triton.jit
def forward(x_ptr, y_ptr, C, HW, k, alpha, beta, HALF: tl.constexpr, RELU: tl.constexpr,
            THREE_QUARTERS: tl.constexpr, BLOCK: tl.constexpr):
    pos, pmask, image = _block(C, HW, BLOCK)
    for c in range(C):
        s = _scale(x_ptr, image, c, C, HW, pos, pmask, k, alpha, HALF, RELU, BLOCK)
        a = _load(x_ptr, image + c * HW + pos, pmask, RELU)
        y = a * _pow_neg(s, beta, THREE_QUARTERS)
        tl.store(y_ptr + image + c * HW + pos, y.to(y_ptr.dtype.element_ty), mask=pmask)

@triton.jit
def backward_t(x_ptr, g_ptr, t_ptr, C, HW, k, alpha, beta, HALF: tl.constexpr, RELU: tl.constexpr,
               THREE_QUARTERS: tl.constexpr, BLOCK: tl.constexpr):
    pos, pmask, image = _block(C, HW, BLOCK)
    for c in range(C):
        s = _scale(x_ptr, image, c, C, HW, pos, pmask, k, alpha, HALF, RELU, BLOCK)
        a = _load(x_ptr, image + c * HW + pos, pmask, RELU)
        g = tl.load(g_ptr + image + c * HW + pos, mask=pmask, other=0.0).to(tl.float32)
        tl.store(t_ptr + image + c * HW + pos, g * a * _pow_neg(s, beta, THREE_QUARTERS) / s, mask=pmask)

@triton.jit
def backward(x_ptr, g_ptr, t_ptr, gx_ptr, C, HW, k, alpha, beta, HALF: tl.constexpr, RELU: tl.constexpr,
             THREE_QUARTERS: tl.constexpr, BLOCK: tl.constexpr):
    pos, pmask, image = _block(C, HW, BLOCK)
    for c in range(C):
        s = _scale(x_ptr, image, c, C, HW, pos, pmask, k, alpha, HALF, RELU, BLOCK)
        window = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(2 * HALF + 1):
            cc = c - HALF + j
            inside = (cc >= 0) & (cc < C)
            window += tl.load(t_ptr + image + cc * HW + pos, mask=pmask & inside, other=0.0)
        x = tl.load(x_ptr + image + c * HW + pos, mask=pmask, other=0.0).to(tl.float32)
        a = x
        if RELU:
            a = tl.maximum(x, 0.0)
        g = tl.load(g_ptr + image + c * HW + pos, mask=pmask, other=0.0).to(tl.float32)
        grad = g * _pow_neg(s, beta, THREE_QUARTERS) - 2.0 * alpha * beta * a * window
        if RELU:
            grad = tl.where(x > 0.0, grad, 0.0)
        tl.store(gx_ptr + image + c * HW + pos, grad.to(gx_ptr.dtype.element_ty), mask=pmask)


BLOCK = 256


def _launch(kernel, x: torch.Tensor, *tensors, params) -> None:
    size, alpha, beta, k, relu = params
    n, c = x.shape[0], x.shape[1]
    hw = x[0, 0].numel()
    grid = (n, triton.cdiv(hw, BLOCK))
    kernel[grid](x, *tensors, c, hw, float(k), float(alpha), float(beta), HALF=size // 2, RELU=bool(relu),
                 THREE_QUARTERS=beta == 0.75, BLOCK=BLOCK)


def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    _launch(forward, x, y, params=(size, alpha, beta, k, relu))
    return y


def lrn_backward(grad: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                 relu: bool) -> torch.Tensor:
    x, grad = x.contiguous(), grad.contiguous()
    t = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    params = (size, alpha, beta, k, relu)
    _launch(backward_t, x, grad, t, params=params)
    grad_x = torch.empty_like(x)
    _launch(backward, x, grad, t, grad_x, params=params)
    return grad_x


class TritonLRN(torch.autograd.Function):
    """The Triton kernels as an autograd Function (the same interface as the other LRN Functions)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, relu):
        ctx.save_for_backward(x)
        ctx.params = (size, alpha, beta, k, relu)
        return lrn_forward(x, size, alpha, beta, k, relu)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return lrn_backward(grad, x, *ctx.params), None, None, None, None, None
