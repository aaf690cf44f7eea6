"""conv1 made cheaper on the CPU, with the same numbers: a channels-last image read as half as wide with twice
the channels, and the weight gradient computed tower by tower.

**Two pixels as one.** In a channels-last batch the three values of pixel (h, 2j) are followed by those of
(h, 2j + 1), so the same memory is also an image of width W / 2 with 6 channels, at no cost (a view). conv1's
stride (4) and padding (2) are even, so each output reads whole pairs: 11 columns of 3 channels are 6 columns
of 6 channels with one zero column, and the convolution over the folded image (stride (4, 2), padding (2, 1))
computes the same sums. oneDNN's bf16 kernels took as long for 3 input channels as for 4 (they work on
pairs of channels); 6 channels waste nothing but the zero column (AMD EPYC Zen 4, 2 threads, batch 128, bf16: the
forward 70.5 ms against 91.8 ms). The weight is folded the same way on every call (35 thousand values) and its
gradient unfolded by autograd. Used where the batch is channels-last on the CPU and the geometry allows it.

**Towers.** The paper's conv1 is two towers of 48 kernels that both read the whole image. oneDNN's
weight-gradient kernel for 96 kernels of 11x11x3 at stride 4 ran at 141 ms per batch of 128 on the 2-core CPU,
against 87 ms for two calls of 48 kernels each (aten.convolution_backward alone, 2 threads, jemalloc;
splitting conv3 the same way was slower, 261 vs 215 ms), so on the CPU, for a plain-layout batch in fp32, the
backward pass asks for each tower's gradient separately.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _TowerWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, towers):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, towers)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, towers = ctx.conf
        backward = torch.ops.aten.convolution_backward
        common = (list(stride), list(padding), [1, 1], False, [0, 0], 1)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = backward(grad, x, weight, None, *common, [True, False, False])[0]
        per = weight.shape[0] // towers
        grad_w = torch.cat([
            backward(grad[:, t * per:(t + 1) * per], x, weight[t * per:(t + 1) * per], None, *common,
                     [False, True, False])[1]
            for t in range(towers)
        ])
        return grad_x, grad_w, grad.sum((0, 2, 3)), None, None, None


class TowerConv2d(nn.Conv2d):
    """An ungrouped Conv2d (same parameters, same state_dict) whose CPU weight gradient is taken per tower."""

    def __init__(self, *args, towers: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.out_channels % towers or self.dilation != (1, 1):
            raise ValueError(f"TowerConv2d needs an ungrouped, undilated conv with {towers} | out_channels")
        self.towers = towers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        folded = self._folded(x)
        if folded is not None:
            stride, padding = folded
            return F.conv2d(fold_width(x), fold_weight(self.weight), self.bias, stride, padding)
        plain = (
            x.device.type != "cpu"
            or self.towers == 1
            or not torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")  # the saved tensors would be fp32, the gradient bf16
            or isinstance(self.padding, str)
            or self.padding_mode != "zeros"
        )
        if plain:
            return super().forward(x)
        return _TowerWeightGrad.apply(x, self.weight, self.bias, self.stride, self.padding, self.towers)

    def _folded(self, x: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The folded convolution's stride and padding where it computes this layer on `x`, else None."""
        if (
            not FOLD
            or x.device.type != "cpu"
            or x.dim() != 4
            or x.requires_grad
            or isinstance(self.padding, str)
            or self.padding_mode != "zeros"
            or not x.is_contiguous(memory_format=torch.channels_last)
            or x.is_contiguous()  # a single pixel or channel: either layout, keep the plain call
            or tracing()
        ):
            return None
        (sh, sw), (ph, pw), kw, width = self.stride, self.padding, self.kernel_size[1], x.shape[-1]
        if sw % 2 or pw % 2 or width % 2:
            return None
        out = (width + 2 * pw - kw) // sw + 1
        if out < 1 or (width // 2 + pw - (kw + 1) // 2) // (sw // 2) + 1 != out:
            return None
        return (sh, sw // 2), (ph, pw // 2)


FOLD = True  # False: always the plain convolution (for measuring the fold against it)


def tracing() -> bool:
    """Whether the module is being traced or compiled (TorchScript, torch.compile, torch.export): then the
    layers take their plain form, which every tracer knows."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def fold_width(x: torch.Tensor) -> torch.Tensor:
    """A channels-last (N, C, H, W) batch, W even, as the (N, 2C, H, W / 2) batch of pixel pairs: a view."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h, w // 2, 2 * c).permute(0, 3, 1, 2)


def fold_weight(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, kh, kw) kernels as (O, 2C, kh, ceil(kw / 2)) over pixel pairs (an odd width gains a zero column);
    channel 2C's index is pixel-in-pair * C + channel, as in :func:`fold_width`."""
    o, c, kh, kw = weight.shape
    pairs = (kw + 1) // 2
    padded = F.pad(weight, (0, 2 * pairs - kw))
    folded = padded.reshape(o, c, kh, pairs, 2).permute(0, 4, 1, 2, 3).reshape(o, 2 * c, kh, pairs)
    return folded.contiguous(memory_format=torch.channels_last)
