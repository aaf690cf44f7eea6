"""A locally connected layer: a convolution whose kernels are not shared across positions (cuda-convnet's
``type=local``), the layer behind the conv-local CIFAR-10 nets of Section 3.3.

Every output position (y, x) has its own filter bank (C*k*k inputs -> F outputs) and its own biases. The
forward pass is one batched matrix product over positions: the input's k x k patches are unfolded to
(N, C*k*k, L) for the L = H_out * W_out positions, turned to (L, N, C*k*k), and multiplied by the (L, C*k*k, F)
weights in one ``torch.bmm``; autograd gives the backward pass through the same two operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class LocallyConnected2d(nn.Module):
    """Unshared k x k filters at each position of an (in_channels, height, width) input.

    Args:
        in_channels, out_channels: C and F.
        input_size: (height, width) of the input: the layer has weights per position, so it fixes them.
        kernel_size, stride, padding: as for a convolution (square).

    Parameters: ``weight`` (L, C*k*k, F), one matrix per output position in row-major order; ``bias``
    (F, H_out, W_out).
    """

    def __init__(self, in_channels: int, out_channels: int, input_size: tuple[int, int], kernel_size: int,
                 stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        h, w = input_size
        self.out_hw = (_out_size(h, kernel_size, stride, padding), _out_size(w, kernel_size, stride, padding))
        if min(self.out_hw) < 1:
            raise ValueError(f"LocallyConnected2d: kernel {kernel_size} does not fit a {h}x{w} input "
                             f"with padding {padding}")
        self.in_channels, self.out_channels, self.input_size = in_channels, out_channels, (h, w)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        positions = self.out_hw[0] * self.out_hw[1]
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(positions, fan_in, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels, *self.out_hw))
        bound = fan_in ** -0.5  # the scale of PyTorch's default for a layer of this fan-in
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.in_channels, *self.input_size):
            raise ValueError(f"LocallyConnected2d expects (N, {self.in_channels}, {self.input_size[0]}, "
                             f"{self.input_size[1]}) inputs; got {tuple(x.shape)}")
        n = x.shape[0]
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C*k*k, L)
        out = torch.bmm(patches.permute(2, 0, 1), self.weight.to(patches.dtype))  # (L, N, F)
        out = out.permute(1, 2, 0).reshape(n, self.out_channels, *self.out_hw)
        return out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")
