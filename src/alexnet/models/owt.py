"""torchvision's AlexNet: the single-tower "one weird trick" variant (Krizhevsky 2014), not the paper's net.

64-192-384-256-256 kernels, no LRN, no towers, dropout before fc6 and fc7, 61,100,840 parameters with 1000
classes. The module tree and state_dict keys are torchvision's (``features.N``, ``classifier.N``), so
torchvision's published weights load unchanged and give identical outputs. It is here as the comparison
point that most "AlexNet" numbers in the wild refer to.
"""

from __future__ import annotations

import torch
from torch import nn

from alexnet.models.dropout import dropout_layer


class AlexNetOWT(nn.Module):
    """torchvision's module tree; ``dropout_form`` "inverted" (torchvision's, the form its weights were
    trained with) or "paper" (`alexnet.models.dropout`)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, dropout_form: str = "inverted") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            dropout_layer(dropout, dropout_form),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            dropout_layer(dropout, dropout_form),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the second hidden FC layer after ReLU, (N, 4096)."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[6](self.forward_features(x))
