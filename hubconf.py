"""torch.hub entry points: `torch.hub.load(REPO_OR_CHECKOUT, "alexnet", ...)`.

    net = torch.hub.load("/path/to/checkout", "alexnet", source="local")            # the paper's network
    net = torch.hub.load("/path/to/checkout", "alexnet", source="local", weights="run/best.pt")
    net = torch.hub.load("/path/to/checkout", "model", source="local", name="alexnet_onetower")

`weights` is a pretrained folder (`alexnet.save_pretrained`), a checkpoint or a .safetensors file, or an
http(s) URL of a .safetensors/.pt file (downloaded once into torch.hub's cache; offline, a clear error). With
weights the network comes in evaluation mode, its preprocessing in `net.alexnet_trained` (a TrainedNetwork:
mean image, classes, `augmenter`).
"""

from __future__ import annotations

import os
import sys

dependencies = ["torch", "torchvision", "numpy", "safetensors"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:  # a checkout used without installing the package
    sys.path.insert(0, _SRC)


def _weights_path(weights: str) -> str:
    if not weights.startswith(("http://", "https://")):
        return weights
    import urllib.error

    import torch

    folder = os.path.join(torch.hub.get_dir(), "alexnet")
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, os.path.basename(weights.split("?")[0]))
    if not os.path.isfile(target):
        try:
            torch.hub.download_url_to_file(weights, target, progress=True)
        except (urllib.error.URLError, OSError) as err:
            raise RuntimeError(
                f"could not download {weights} ({err}); without a network, download the file elsewhere and "
                "pass its local path as weights="
            ) from err
    return target


def model(name: str = "alexnet", weights: str | None = None, num_classes: int = 1000, **overrides):
    """A registered network (`alexnet.list_models()`), fresh or with trained weights."""
    import alexnet

    if weights is None:
        return alexnet.create_model(name, num_classes, **overrides)
    trained = alexnet.from_pretrained(_weights_path(weights))
    if trained.config.model.name != name:
        raise ValueError(f"{weights} holds {trained.config.model.name!r}, not {name!r}")
    net = trained.model
    net.alexnet_trained = trained
    return net


def alexnet(weights: str | None = None, num_classes: int = 1000, **overrides):
    """The paper's network (two towers, LRN as the 2012 code computed it, the paper's dropout and init)."""
    return model("alexnet", weights, num_classes, **overrides)


def alexnet_owt(weights: str | None = None, num_classes: int = 1000, **overrides):
    """The one-tower variant of "One weird trick" (torchvision's layout)."""
    return model("alexnet_owt", weights, num_classes, **overrides)
