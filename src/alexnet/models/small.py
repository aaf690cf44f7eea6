"""The small CIFAR-10 networks behind the paper's side experiments (Sections 3.1 and 3.3).

Figure 1 compares ReLU and tanh in "a four-layer convolutional neural network" on CIFAR-10; Section 3.3
reports that response normalisation takes "a four-layer CNN" from 13 % to 11 % test error. The paper gives
neither net's layers. ``cifar_relu``, ``cifar_tanh`` and ``cifar_lrn`` use the cuda-convnet CIFAR-10 layout
of that period (three 5x5 conv layers of 32, 32 and 64 kernels, each followed by 3/2 max pooling, then one
fully connected layer: four weight layers), with the activation and normalisation switchable and PyTorch's
default initialisation. Their LRN is the paper's cross-map formula with a window of 3 (alpha 1e-4 divided by
the window, k 2, beta 0.75); cuda-convnet's layers-18pct.cfg normalises *within* each map (a 3x3 spatial
window) instead.

``cifar_fig1_relu`` and ``cifar_fig1_tanh`` follow cuda-convnet's ``layers-19pct.cfg`` layer by layer (the
18pct file without its two spatial normalisation layers), the net the Figure 1 experiment
(`alexnet.experiments.relu_vs_tanh`) trains: max pooling after conv1, *average* pooling after conv2 and
conv3, cuda-convnet's pooling geometry (windows start at the first pixel, the last one is clipped:
``ceil_mode``), weights drawn from N(0, std) with the file's initW per layer (1e-4 for conv1, 0.01 for the
others), biases 0.

``cifar_convlocal_lrn`` and ``cifar_convlocal`` are cuda-convnet's ``layers-conv-local-11pct.cfg``, the net of
Section 3.3's "13 % without normalisation, 11 % with" (`alexnet.experiments.lrn_cifar`), with and without
its two cross-map normalisation layers: for 24x24 crops, conv1 (64 5x5, padding 2) -> ReLU -> 3/2 max pool
-> [cmrnorm], conv2 (64 5x5, padding 2) -> ReLU -> [cmrnorm] -> 3/2 max pool, two locally connected layers
(64 then 32 unshared 3x3 filters, padding 1, on the 6x6 maps; `alexnet.models.local`) each with ReLU, then
fc10. cuda-convnet's ``cmrnorm`` with size 9 and scale 0.001 divides by (1 + 0.001 / 9 * sum of squares
over 9 adjacent maps) ^ 0.75: ``LRNParams(size=9, alpha=0.001, beta=0.75, k=1)``, alpha divided by n. Weights
N(0, initW) with the file's initW (1e-4, 0.01, 0.04, 0.04, 0.01), biases 0. Its layer-params file gives each
layer its own weight decay (0 for the conv layers, 0.004 for the local ones, 0.01 for fc10) and biases
twice the weights' learning rate: ``optimizer_groups`` hands the optimiser those per-layer settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from alexnet.models.alexnet import ACTIVATIONS
from alexnet.models.dropout import dropout_layer
from alexnet.models.local import LocallyConnected2d
from alexnet.models.lrn import LocalResponseNorm, LRNParams

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
# cuda-convnet's layers-18pct.cfg / layers-19pct.cfg: initW of conv1, conv2, conv3, fc10
CUDA_CONVNET_19PCT_INIT = (1e-4, 0.01, 0.01, 0.01)
# layers-conv-local-11pct.cfg and its layer-params file, by layer: initW, and weight decay (wc) as a multiple
# of optim.weight_decay, whose value for this net is the local layers' 0.004 (fc10's 0.01 = 2.5 x 0.004).
CONVLOCAL_INIT = {"conv1": 1e-4, "conv2": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}
CONVLOCAL_DECAY = {"conv1": 0.0, "conv2": 0.0, "local3": 1.0, "local4": 1.0, "fc10": 2.5}
CONVLOCAL_WEIGHT_DECAY = 0.004
CONVLOCAL_BIAS_LR = 2.0  # epsB = 2 epsW
# cuda-convnet's cmrnorm, size 9, scale 0.001 (divided by the size), pow 0.75, and 1 + ...
CONVLOCAL_LRN = LRNParams(size=9, alpha=0.001, beta=0.75, k=1.0)
# cifar_lrn's cross-map LRN: the paper's constants over a window of 3
CIFAR_LRN = LRNParams(size=3)


class CifarNet(nn.Module):
    """Four weight layers for 32x32 images: conv1-conv3 (32, 32, 64 kernels of 5x5) and fc4.

    Args:
        num_classes: outputs of fc4.
        activation: "relu" or "tanh", after every conv layer.
        lrn: cross-map response normalisation after each conv layer's activation.
        lrn_params: its constants (window 3, the paper's alpha, beta and k by default).
        dropout: before fc4.
        dropout_form: "paper" or "inverted" (`alexnet.models.dropout`).
        pools: the pooling after conv1, conv2, conv3 ("max" or "avg"), each 3x3 with stride 2.
        pool_ceil: cuda-convnet's pooling geometry (windows at 0, 2, ..., the last one clipped at the
            border) instead of windows centred by a padding of 1; both give 16, 8, 4.
        init_std: N(0, std) weights per layer (conv1, conv2, conv3, fc4) and zero biases; None keeps
            PyTorch's default initialisation.
    """

    def __init__(self, num_classes: int = 10, activation: str = "relu", lrn: bool = False,
                 dropout: float = 0.0, pools: Sequence[str] = ("max", "max", "max"), pool_ceil: bool = False,
                 init_std: Sequence[float] | None = None, lrn_params: LRNParams = CIFAR_LRN,
                 dropout_form: str = "paper") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {sorted(ACTIVATIONS)}")
        if len(pools) != 3 or any(p not in POOLS for p in pools):
            raise ValueError(f"pools {pools!r}: expected three of {sorted(POOLS)}")
        act = ACTIVATIONS[activation]

        def block(cin: int, cout: int, pool: str) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=2), act()]
            if lrn:
                layers.append(LocalResponseNorm(lrn_params))
            layers.append(POOLS[pool](3, 2, ceil_mode=True) if pool_ceil else POOLS[pool](3, 2, padding=1))
            return nn.Sequential(*layers)

        self.conv1, self.conv2, self.conv3 = (block(3, 32, pools[0]), block(32, 32, pools[1]),
                                              block(32, 64, pools[2]))  # 16, 8, 4
        self.dropout = dropout_layer(dropout, dropout_form)
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


class ConvLocalNet(nn.Module):
    """cuda-convnet's layers-conv-local-11pct.cfg for 24x24 crops (see the module docstring).

    Args:
        num_classes: outputs of fc10.
        lrn: the file's two cross-map normalisation layers (False: the same net without them).
        dropout: before fc10 (the file has none).
        input_size: the crop (24 in the file); the locally connected layers are sized for it.
        lrn_params: the normalisation's constants (the file's by default).
        dropout_form: "paper" or "inverted" (`alexnet.models.dropout`).
    """

    def __init__(self, num_classes: int = 10, lrn: bool = True, dropout: float = 0.0,
                 input_size: int = 24, lrn_params: LRNParams = CONVLOCAL_LRN, dropout_form: str = "paper") -> None:
        super().__init__()

        def norm() -> list[nn.Module]:
            return [LocalResponseNorm(lrn_params)] if lrn else []

        def pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(3, 2, ceil_mode=True)  # cuda-convnet's geometry: windows from 0, last clipped

        side = input_size
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
        self.block1 = nn.Sequential(nn.ReLU(), pool(), *norm())
        side = -(-(side - 3) // 2) + 1
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.block2 = nn.Sequential(nn.ReLU(), *norm(), pool())
        side = -(-(side - 3) // 2) + 1
        self.local3 = LocallyConnected2d(64, 64, (side, side), 3, padding=1)
        self.local4 = LocallyConnected2d(64, 32, (side, side), 3, padding=1)
        self.dropout = dropout_layer(dropout, dropout_form)
        self.fc10 = nn.Linear(32 * side * side, num_classes)
        for name, std in CONVLOCAL_INIT.items():
            layer = getattr(self, name)
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Crops (N, 3, 24, 24) -> local4's flattened maps after ReLU (N, 1152)."""
        x = self.block2(self.conv2(self.block1(self.conv1(x))))
        x = torch.relu(self.local4(torch.relu(self.local3(x))))
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc10(self.dropout(self.forward_features(x)))

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """The layer-params file's settings as optimiser groups: each layer's weights with its weight decay
        (CONVLOCAL_DECAY times `weight_decay`), every bias without decay at twice the learning rate
        (``lr_scale``, which `alexnet.optim.set_lr` applies)."""
        groups = [{"params": [getattr(self, name).weight], "weight_decay": scale * weight_decay}
                  for name, scale in CONVLOCAL_DECAY.items()]
        groups.append({"params": [getattr(self, name).bias for name in CONVLOCAL_DECAY], "weight_decay": 0.0,
                       "lr_scale": CONVLOCAL_BIAS_LR})
        return groups
