"""conv1 with its weight gradient computed tower by tower: the same numbers, faster on the CPU.

The paper's conv1 is two towers of 48 kernels that both read the whole image. oneDNN's weight-gradient
kernel for 96 kernels of 11x11x3 at stride 4 ran at 141 ms per batch of 128 on the 2-core CPU, against 87 ms
for two calls of 48 kernels each (aten.convolution_backward alone, 2 threads, jemalloc; splitting conv3 the
same way was slower, 261 vs 215 ms), so on the CPU the backward pass asks for each tower's gradient
separately (in fp32; under autocast, and on every other device, it is a plain conv2d).
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
        plain = (
            x.device.type != "cpu"
            or self.towers == 1
            or not torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")  # the saved tensors would be fp32, the gradient bf16
            or isinstance(self.padding, str)
        )
        if plain:
            return super().forward(x)
        return _TowerWeightGrad.apply(x, self.weight, self.bias, self.stride, self.padding, self.towers)
