"""The small CIFAR-10 networks behind the paper's side experiments (Sections 3.1 and 3.3).

Figure 1 compares ReLU and tanh in "a four-layer convolutional neural network" on CIFAR-10; Section 3.3
reports that response normalisation takes "a four-layer CNN" from 13 % to 11 % test error. The paper gives
neither net's layers. We use the cuda-convnet CIFAR-10 layout of that period (three 5x5 conv layers of 32,
32 and 64 kernels, each followed by 3/2 pooling, then one fully connected layer: four weight layers), with
the activation and normalisation switchable. The LRN here uses the paper's k, alpha, beta and a window of 3
(cuda-convnet's CIFAR setting); all of this is a documented choice, not the paper's text.
"""

from __future__ import annotations

import torch
from torch import nn

from alexnet.models.alexnet import ACTIVATIONS
from alexnet.models.lrn import LocalResponseNorm


class CifarNet(nn.Module):
    """Four weight layers for 32x32 images: conv1-conv3 (32, 32, 64 kernels of 5x5) and fc4."""

    def __init__(self, num_classes: int = 10, activation: str = "relu", lrn: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {sorted(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]

        def block(cin: int, cout: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=2), act()]
            if lrn:
                layers.append(LocalResponseNorm(size=3))
            layers.append(nn.MaxPool2d(3, 2, padding=1))
            return nn.Sequential(*layers)

        self.conv1, self.conv2, self.conv3 = block(3, 32), block(32, 32), block(32, 64)  # 16, 8, 4
        self.dropout = nn.Dropout(dropout)
        self.fc4 = nn.Linear(64 * 4 * 4, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, 32, 32) -> flattened conv3 maps (N, 1024)."""
        return torch.flatten(self.conv3(self.conv2(self.conv1(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc4(self.dropout(self.forward_features(x)))
