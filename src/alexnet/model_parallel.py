"""The paper's two-GPU model parallelism (Section 3.2, Figure 2) as a placement of the two towers.

Each device holds half the kernels of every layer: tower t has output channels [t*C/2, (t+1)*C/2) of each
convolutional layer and output units [t*N/2, (t+1)*N/2) of each fully connected layer. A grouped layer
(conv2, conv4, conv5: "kernels which reside on the same GPU") reads only its own tower's maps; an ungrouped
one (conv3, fc6, fc7, fc8: "the GPUs communicate only in certain layers") reads both, so activations cross
devices there and nowhere else. Everything after a convolution (ReLU, response normalisation, pooling) runs
on each tower's own maps, as on the paper's GPUs, where each GPU normalises its own kernel maps.

The wrapper is built from a single-device `AlexNet` and can give its weights back in that layout
(`single_state_dict`), so checkpoints are the same whichever placement trained them. Under torchrun it
composes with DistributedDataParallel (a multi-device module: DDP without device_ids).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from alexnet.config import RunConfig
from alexnet.distributed import DistInfo
from alexnet.models.lrn import LocalResponseNorm, LRNMaxPool


def tower_devices(device: torch.device) -> tuple[torch.device, torch.device]:
    """The two devices of the towers: GPUs 2k and 2k+1 for a process given GPU k; the CPU twice otherwise."""
    if device.type == "cuda":
        k = device.index or 0
        return torch.device("cuda", 2 * k), torch.device("cuda", 2 * k + 1)
    return device, device


def _half_conv(conv: nn.Conv2d, t: int, cross: bool) -> nn.Conv2d:
    """Tower t's half of `conv`: its output kernels, reading its own input half or (cross) every map."""
    out = conv.out_channels // 2
    if conv.groups == 2:
        in_channels = conv.in_channels // 2
    elif conv.groups == 1:
        in_channels = conv.in_channels
    else:
        raise ValueError(f"a convolution with groups={conv.groups} cannot be split into two towers")
    if conv.groups == 2 and cross:
        raise ValueError("the first convolution cannot be grouped: it reads the image")
    half = nn.Conv2d(in_channels, out, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        half.weight.copy_(conv.weight[t * out : (t + 1) * out])
        half.bias.copy_(conv.bias[t * out : (t + 1) * out])
    return half


def _half_linear(fc: nn.Linear, t: int) -> nn.Linear:
    bounds = _split(fc.out_features)
    half = nn.Linear(fc.in_features, bounds[t + 1] - bounds[t])
    with torch.no_grad():
        half.weight.copy_(fc.weight[bounds[t] : bounds[t + 1]])
        half.bias.copy_(fc.bias[bounds[t] : bounds[t + 1]])
    return half


def _split(n: int) -> tuple[int, int, int]:
    return 0, (n + 1) // 2, n


class Tower(nn.Module):
    """One device's half of the network (Figure 2's upper or lower half)."""

    def __init__(self, model: nn.Module, t: int):
        super().__init__()
        self.blocks = list(model.blocks)
        self.grouped = {name: getattr(model, name).groups == 2 for name in self.blocks}
        for i, name in enumerate(self.blocks):
            conv = getattr(model, name)
            setattr(self, name, _half_conv(conv, t, cross=i == 0))
            post = copy.deepcopy(getattr(model, f"{name}_post"))
            for layer in post.modules():
                if isinstance(layer, LocalResponseNorm | LRNMaxPool):
                    layer.groups = 1  # this device holds one tower's maps: normalise them all
            setattr(self, f"{name}_post", post)
        for name in ("fc6", "fc7", "fc8"):
            setattr(self, name, _half_linear(getattr(model, name), t))
        self.act6, self.act7 = copy.deepcopy(model.act6), copy.deepcopy(model.act7)
        self.drop6, self.drop7 = copy.deepcopy(model.drop6), copy.deepcopy(model.drop7)


class TowerParallel(nn.Module):
    """The paper's network with its two towers on two devices; see the module docstring.

    Args:
        model: a paper-family network (`alexnet`, its ablations) on the CPU, whose weights are split.
        devices: the towers' devices; the output (logits) is returned on the first.
    """

    def __init__(self, model: nn.Module, devices: tuple[torch.device, torch.device]):
        super().__init__()
        if not all(hasattr(model, a) for a in ("blocks", "fc6", "fc7", "fc8")):
            raise ValueError(
                f"{type(model).__name__} is not the paper's network (conv1..conv5, fc6..fc8); "
                "model parallelism splits its towers"
            )
        if getattr(model.config, "towers", 1) != 2:
            raise ValueError(
                f"{type(model).__name__} with towers={model.config.towers} has no towers to place; model "
                "parallelism needs a two-tower network (alexnet and its two-tower ablations)"
            )
        if getattr(model.config, "lrn_across_towers", False):
            raise ValueError(
                "this network's LRN normalises across both towers' maps (lrn_across_towers=True, as in "
                "alexnet_caffe), which two devices holding one tower each cannot compute; use run.model_parallel = 1"
            )
        self.devices = tuple(torch.device(d) for d in devices)
        self.source_keys = list(model.state_dict())
        self.towers = nn.ModuleList(Tower(model, t).to(d) for t, d in enumerate(self.devices))

    def _both(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tower's copy of both towers' activations, concatenated (the only cross-device traffic)."""
        return [torch.cat([p.to(d, non_blocking=True) for p in parts], 1) for d in self.devices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        towers = self.towers
        h = [x.to(d, non_blocking=True) for d in self.devices]
        for i, name in enumerate(towers[0].blocks):
            if i > 0 and not towers[0].grouped[name]:
                h = self._both(h)  # conv3: every kernel sees both towers' maps
            h = [getattr(tw, f"{name}_post")(getattr(tw, name)(a)) for tw, a in zip(towers, h, strict=True)]
        h = self._both([torch.flatten(a, 1) for a in h])  # (N, 9216) on each device, the single net's order
        h = self._both([tw.drop6(tw.act6(tw.fc6(a))) for tw, a in zip(towers, h, strict=True)])
        h = self._both([tw.drop7(tw.act7(tw.fc7(a))) for tw, a in zip(towers, h, strict=True)])
        logits = [tw.fc8(a) for tw, a in zip(towers, h, strict=True)]
        return torch.cat([logits[0], logits[1].to(self.devices[0])], 1)

    def single_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the single-device network's layout and keys (for checkpoints and export)."""
        halves = [tw.state_dict() for tw in self.towers]
        return {k: torch.cat([halves[0][k].cpu(), halves[1][k].cpu()], 0) for k in self.source_keys}


def place_model(model: nn.Module, run: RunConfig, process: DistInfo) -> tuple[nn.Module, nn.Module]:
    """Put the model on its device(s): (the module to train, the module whose state is checkpointed).

    `run.model_parallel = 2` splits the towers over two devices; under torchrun the module to train is
    wrapped in DistributedDataParallel.
    """
    raw: nn.Module = TowerParallel(model, tower_devices(process.device)) if run.model_parallel == 2 else model.to(
        process.device
    )
    if run.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if process.world_size == 1:
        return raw, raw
    one_device = process.device.type == "cuda" and run.model_parallel == 1
    return DistributedDataParallel(raw, device_ids=[process.device] if one_device else None), raw


def single_state_dict(raw: nn.Module) -> dict[str, torch.Tensor]:
    """The weights in the single-device layout, whatever the placement (what checkpoints hold)."""
    return raw.single_state_dict() if isinstance(raw, TowerParallel) else raw.state_dict()
