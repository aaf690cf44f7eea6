"""The network of Krizhevsky, Sutskever and Hinton (2012), Section 3 and Figure 2, and its ablations.

Five convolutional and three fully connected layers; conv2, conv4 and conv5 see only the kernel maps of
their own tower ("GPU"), conv3 and the fully connected layers see both. ReLU after every layer but fc8,
response normalisation after the ReLUs of conv1 and conv2, overlapping max pooling (3/2) after LRN1, LRN2
and conv5, dropout 0.5 before fc7 and fc8 (i.e. on the outputs of fc6 and fc7).

Every ablation of the paper is one :class:`AlexNetConfig`; there is one network class.

Choices the paper leaves open, and what we do:

* Input size. The paper says 224x224, but 224 with an 11x11 stride-4 kernel gives 55x55 only with
  cuda-convnet's output-size arithmetic. We pad conv1 by 2 at 224 (55x55, the default) and by 0 at 227.
* Dropout. The paper's form (Section 4.2): kept units unscaled in training, every output times 0.5 at
  test (``dropout_form="paper"``, cuda-convnet2's ``dropout2``). PyTorch's inverted dropout (x2 in
  training, identity at test) is the same function at test time but trains a different network: the layer
  after it starts at twice the standard deviation and learns at four times the rate, which kills fc7
  under the paper's initialisation. ``dropout_form="inverted"`` keeps it as a choice (alexnet_caffe uses it,
  as Caffe did).
* LRN's alpha. The paper prints alpha = 1e-4 in front of the sum of squares; the 2012 code divides it by
  n = 5 first (see :mod:`alexnet.models.lrn`). We follow the code (``lrn_params=PAPER_LRN``);
  ``PRINTED_LRN`` reads the formula literally.
* Response normalisation within a tower. Section 3.3 sums over "adjacent kernel maps"; on the paper's
  two GPUs each GPU normalised its own 48 (conv1) or 128 (conv2) maps (cuda-convnet's per-GPU rnorm
  layers), so the window never reaches across the tower boundary. We do the same (``towers=2``); the
  single-tower variants normalise across all maps, and so does ``lrn_across_towers=True`` (Caffe's
  bvlc_alexnet, whose norm1 and norm2 see both towers' maps while conv2, conv4 and conv5 stay grouped).
* Initialisation. ``init="paper"`` is Section 5 exactly: N(0, 0.01) weights, biases 1 in conv2, conv4,
  conv5, fc6, fc7 (and the extra conv6), 0 elsewhere. ``"cuda-convnet"`` is std 0.03 for conv3-conv5 (and
  conv6), as in cuda-convnet2's ImageNet layer files (2014; the 2012 files were not published).
  ``"kaiming"`` (He et al. 2015, fan-in, zero biases) is not the paper's; it wants input of about unit
  variance (scale the mean-subtracted pixels down, see the data config's ``input_scale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from alexnet.models.conv import TowerConv2d, tracing
from alexnet.models.dropout import DROPOUT_FORMS, dropout_layer
from alexnet.models.lrn import PAPER_LRN, LocalResponseNorm, LRNMaxPool, LRNParams

INITS = ("paper", "cuda-convnet", "kaiming")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class ConvSpec:
    """One convolutional layer and what follows it."""

    name: str
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1  # 2 = each output tower sees only its own input tower
    lrn: bool = False
    pool: bool = False
    bias: float = 0.0  # the paper's initial bias (Section 5)


def paper_convs(input_size: int = 224) -> tuple[ConvSpec, ...]:
    """Figure 2's five convolutional layers. ``input_size`` 224 pads conv1 by 2, 227 by 0 (both give 55)."""
    if input_size not in (224, 227):
        raise ValueError(f"input_size {input_size}: the paper's net takes 224 (conv1 padded by 2) or 227")
    return (
        ConvSpec("conv1", 96, 11, stride=4, padding=2 if input_size == 224 else 0, lrn=True, pool=True),
        ConvSpec("conv2", 256, 5, padding=2, groups=2, lrn=True, pool=True, bias=1.0),
        ConvSpec("conv3", 384, 3, padding=1),
        ConvSpec("conv4", 384, 3, padding=1, groups=2, bias=1.0),
        ConvSpec("conv5", 256, 3, padding=1, groups=2, pool=True, bias=1.0),
    )


@dataclass(frozen=True)
class AlexNetConfig:
    """Everything that distinguishes the paper's net from its ablations; defaults are the paper's."""

    num_classes: int = 1000
    input_size: int = 224
    convs: tuple[ConvSpec, ...] = field(default_factory=paper_convs)
    fc_width: int = 4096
    activation: str = "relu"
    towers: int = 2  # the kernel maps of every layer are split into this many towers ("GPUs")
    lrn: bool = True  # False removes both LRN layers (the "no LRN" ablation)
    lrn_params: LRNParams = PAPER_LRN
    lrn_across_towers: bool = False  # True: the LRN window crosses the tower boundary (Caffe's bvlc_alexnet)
    pool_kernel: int = 3  # z
    pool_stride: int = 2  # s; z = s = 2 is the non-overlapping ablation
    dropout: float = 0.5
    dropout_form: str = "paper"  # "paper": unscaled in training, x(1 - p) at test; "inverted": torch's
    init: str = "paper"
    extra_conv: ConvSpec | None = None  # a sixth conv layer over the last pooling layer ("1 CNN*")

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r}: expected one of {sorted(ACTIVATIONS)}")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r}: expected one of {INITS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout {self.dropout}: expected a probability in [0, 1)")
        if self.dropout_form not in DROPOUT_FORMS:
            raise ValueError(f"dropout_form {self.dropout_form!r}: expected one of {DROPOUT_FORMS}")
        if self.towers not in (1, 2):
            raise ValueError(f"towers {self.towers}: expected 1 or 2")
        if self.num_classes < 1:
            raise ValueError(f"num_classes {self.num_classes}: expected at least 1")

    def feature_size(self) -> int:
        """Side of the last pooled map (6 for the paper's net at 224 or 227)."""
        side = self.input_size
        for spec in self.convs:
            side = (side + 2 * spec.padding - spec.kernel) // spec.stride + 1
            if spec.pool:
                side = (side - self.pool_kernel) // self.pool_stride + 1
            if side < 1:
                raise ValueError(f"input {self.input_size} is too small: nothing is left after {spec.name}")
        if self.extra_conv is not None:
            e = self.extra_conv
            side = (side + 2 * e.padding - e.kernel) // e.stride + 1
        return side


class AlexNet(nn.Module):
    """The paper's network (or one of its ablations), with layers named as in the paper.

    ``forward`` returns logits (softmax is in the loss); ``forward_features`` returns the 4096-d fc7
    activations after ReLU, the "last hidden layer" whose Euclidean neighbours Figure 4 shows.
    """

    def __init__(self, config: AlexNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AlexNetConfig()
        act = ACTIVATIONS[cfg.activation]
        # ReLU -> LRN (-> max pool) run as one fused kernel, exactly equal to the separate layers.
        fuse_relu = cfg.activation == "relu"
        self.blocks: list[str] = []
        in_channels = 3
        specs = cfg.convs + ((cfg.extra_conv,) if cfg.extra_conv is not None else ())
        lrn = cfg.lrn_params
        lrn_groups = 1 if cfg.lrn_across_towers else cfg.towers
        for spec in specs:
            # conv1's towers both read the image; on the CPU it runs on pixel pairs of a channels-last batch,
            # or with its weight gradient per tower (alexnet.models.conv).
            per_tower = cfg.towers == 2 and in_channels == 3 and spec.groups == 1
            conv = (TowerConv2d if per_tower else nn.Conv2d)(
                in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding, groups=spec.groups
            )
            setattr(self, spec.name, conv)
            layers: list[nn.Module] = [] if fuse_relu and spec.lrn and cfg.lrn else [act()]
            if spec.lrn and cfg.lrn and spec.pool:
                layers.append(LRNMaxPool(lrn, relu=fuse_relu, pool_kernel=cfg.pool_kernel,
                                         pool_stride=cfg.pool_stride, groups=lrn_groups))
            else:
                if spec.lrn and cfg.lrn:
                    layers.append(LocalResponseNorm(lrn, relu=fuse_relu, groups=lrn_groups))
                if spec.pool:
                    layers.append(nn.MaxPool2d(cfg.pool_kernel, cfg.pool_stride))
            setattr(self, f"{spec.name}_post", nn.Sequential(*layers))
            self.blocks.append(spec.name)
            in_channels = spec.out_channels
        side = cfg.feature_size()
        self.fc6 = nn.Linear(in_channels * side * side, cfg.fc_width)
        self.fc7 = nn.Linear(cfg.fc_width, cfg.fc_width)
        self.fc8 = nn.Linear(cfg.fc_width, cfg.num_classes)
        self.act6, self.act7 = act(), act()
        self.drop6 = dropout_layer(cfg.dropout, cfg.dropout_form)
        self.drop7 = dropout_layer(cfg.dropout, cfg.dropout_form)
        init_weights(self, cfg.init)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, 224, 224) -> last pooled maps, (N, 256, 6, 6) for the paper's net."""
        for name in self.blocks:
            x = getattr(self, f"{name}_post")(getattr(self, name)(x))
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> fc7 activations after ReLU, (N, 4096); before dropout, so deterministic in eval()."""
        x = self.conv_features(x)
        if x.requires_grad and _channels_last_only(x) and not tracing():
            # flatten's gradient comes back in the plain layout, and torch's max-pool backward would then
            # convert its channels-last input and gradient to it and back (13 ms a batch of 128 in fp32)
            x.register_hook(_as_channels_last)
        x = torch.flatten(x, 1)  # (N, 9216)
        x = self.drop6(self.act6(self.fc6(x)))  # (N, 4096)
        return self.act7(self.fc7(x))  # (N, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.drop7(self.forward_features(x)))  # (N, num_classes)


def _channels_last_only(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _as_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def init_weights(model: AlexNet, scheme: str) -> None:
    """Section 5: weights N(0, 0.01); biases 1 where the paper says so, else 0 (see the module docstring)."""
    cfg = model.config
    specs = {s.name: s for s in cfg.convs + ((cfg.extra_conv,) if cfg.extra_conv else ())}
    gain = nn.init.calculate_gain("relu" if cfg.activation == "relu" else "tanh")
    for name, module in model.named_children():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        paper_bias = specs[name].bias if name in specs else (1.0 if name in ("fc6", "fc7") else 0.0)
        if scheme == "kaiming":
            fan_in = module.weight[0].numel()
            std = 0.01 if name == "fc8" else gain / math.sqrt(fan_in)
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)
            continue
        std = 0.03 if scheme == "cuda-convnet" and name in ("conv3", "conv4", "conv5", "conv6") else 0.01
        nn.init.normal_(module.weight, 0.0, std)
        nn.init.constant_(module.bias, paper_bias)

