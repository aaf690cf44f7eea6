"""The small CIFAR-10 networks behind the paper's side experiments (Sections 3.1 and 3.3).

Figure 1 compares ReLU and tanh in "a four-layer convolutional neural network" on CIFAR-10; Section 3.3
reports that response normalisation takes "a four-layer CNN" from 13 % to 11 % test error. The paper gives
neither net's layers. ``cifar_relu``, ``cifar_tanh`` and ``cifar_lrn`` use the cuda-convnet CIFAR-10 layout
of that period (three 5x5 conv layers of 32, 32 and 64 kernels, each followed by 3/2 max pooling, then one
fully connected layer: four weight layers), with the activation and normalisation switchable and PyTorch's
default initialisation. Their LRN is the paper's cross-map formula with a window of 3; cuda-convnet's
layers-18pct.cfg normalises *within* each map (a 3x3 spatial window) instead.

``cifar_fig1_relu`` and ``cifar_fig1_tanh`` follow cuda-convnet's ``layers-19pct.cfg`` layer by layer (the
18pct file without its two spatial normalisation layers), the net the Figure 1 experiment
(`alexnet.experiments.relu_vs_tanh`) trains: max pooling after conv1, *average* pooling after conv2 and
conv3, cuda-convnet's pooling geometry (windows start at the first pixel, the last one is clipped:
``ceil_mode``), weights drawn from N(0, std) with the file's initW per layer (1e-4 for conv1, 0.01 for the
others), biases 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from alexnet.models.alexnet import ACTIVATIONS
from alexnet.models.lrn import LocalResponseNorm

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
# cuda-convnet's layers-18pct.cfg / layers-19pct.cfg: initW of conv1, conv2, conv3, fc10
CUDA_CONVNET_19PCT_INIT = (1e-4, 0.01, 0.01, 0.01)


class CifarNet(nn.Module):
    """Four weight layers for 32x32 images: conv1-conv3 (32, 32, 64 kernels of 5x5) and fc4.

    Args:
        num_classes: outputs of fc4.
        activation: "relu" or "tanh", after every conv layer.
        lrn: cross-map response normalisation (window 3) after each conv layer's activation.
        dropout: before fc4.
        pools: the pooling after conv1, conv2, conv3 ("max" or "avg"), each 3x3 with stride 2.
        pool_ceil: cuda-convnet's pooling geometry (windows at 0, 2, ..., the last one clipped at the
            border) instead of windows centred by a padding of 1; both give 16, 8, 4.
        init_std: N(0, std) weights per layer (conv1, conv2, conv3, fc4) and zero biases; None keeps
            PyTorch's default initialisation.
    """

    def __init__(self, num_classes: int = 10, activation: str = "relu", lrn: bool = False,
                 dropout: float = 0.0, pools: Sequence[str] = ("max", "max", "max"), pool_ceil: bool = False,
                 init_std: Sequence[float] | None = None) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {sorted(ACTIVATIONS)}")
        if len(pools) != 3 or any(p not in POOLS for p in pools):
            raise ValueError(f"pools {pools!r}: expected three of {sorted(POOLS)}")
        act = ACTIVATIONS[activation]

        def block(cin: int, cout: int, pool: str) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=2), act()]
            if lrn:
                layers.append(LocalResponseNorm(size=3))
            layers.append(POOLS[pool](3, 2, ceil_mode=True) if pool_ceil else POOLS[pool](3, 2, padding=1))
            return nn.Sequential(*layers)

        self.conv1, self.conv2, self.conv3 = (block(3, 32, pools[0]), block(32, 32, pools[1]),
                                              block(32, 64, pools[2]))  # 16, 8, 4
        self.dropout = nn.Dropout(dropout)
        self.fc4 = nn.Linear(64 * 4 * 4, num_classes)
        if init_std is not None:
            self._init_normal(init_std)

    def _init_normal(self, stds: Sequence[float]) -> None:
        layers = (self.conv1[0], self.conv2[0], self.conv3[0], self.fc4)
        if len(stds) != len(layers):
            raise ValueError(f"init_std {stds!r}: expected one std per weight layer ({len(layers)})")
        for layer, std in zip(layers, stds, strict=True):
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, 32, 32) -> flattened conv3 maps (N, 1024)."""
        return torch.flatten(self.conv3(self.conv2(self.conv1(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc4(self.dropout(self.forward_features(x)))
