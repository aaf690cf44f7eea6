"""Live units of the fully connected layers: how much of fc6 and fc7 still responds to anything.

A unit is live if its ReLU output is above 0 for at least one of a fixed set of validation images, with the
network in evaluation mode. A network whose fc7 has died (every ReLU at 0 for every input) passes only fc8's
biases to the softmax, and its loss stays at ln(classes) whatever the data: the failure that PyTorch's
inverted dropout causes under the paper's initialisation and learning rate (`alexnet.models.dropout`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from alexnet.data.augment import Augmenter

PROBE_IMAGES = 256


def probe_indices(n: int, count: int = PROBE_IMAGES) -> np.ndarray:
    """`count` image indices spread evenly over a split of `n` images (every class of a sorted store)."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))


def probe_batch(store, augmenter: Augmenter, split: str = "val", count: int = PROBE_IMAGES) -> torch.Tensor:
    """The centre crops of `count` images of `split` spread over it, normalised as in training."""
    images = store.images(split)
    idx = probe_indices(len(images), count)
    return augmenter.center(torch.as_tensor(np.stack([np.asarray(images[int(i)]) for i in idx])))


@torch.no_grad()
def live_units(model: nn.Module, inputs: torch.Tensor, batch: int = 64) -> dict[str, int]:
    """{"fc6": live units, "fc7": live units} of a paper-family network over `inputs`, in evaluation mode
    (the model's mode is restored); {} for a network without fc6 and fc7 (the CIFAR nets)."""
    was_training = model.training
    model.eval()
    seen: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, args, out):
            live = (out > 0).any(0)
            seen[name] = live if name not in seen else seen[name] | live
        return hook

    layers = {"fc6": getattr(model, "act6", None), "fc7": getattr(model, "act7", None)}
    if None in layers.values():
        return {}
    hooks = [act.register_forward_hook(record(name)) for name, act in layers.items()]
    try:
        for start in range(0, len(inputs), batch):
            model(inputs[start:start + batch])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: int(live.sum()) for name, live in seen.items()}
