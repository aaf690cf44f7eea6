"""alexnet: the reference implementation of Krizhevsky, Sutskever and Hinton (NIPS 2012).

The public API (stable; everything else is internal and may change):

    alexnet.list_models()                          the registered networks (the paper's, its ablations, ...)
    alexnet.create_model(name, num_classes=1000)   a network, freshly initialised as its recipe says
    alexnet.load_config(preset, overrides)         a training config ("paper", "demo", "cifar10", or a file)
    alexnet.fit(config, run_dir)                   train (under torchrun: data-parallel); returns a summary
    alexnet.evaluate(checkpoints, store)           top-1 / top-5 error on a prepared store (ensembles too)
    alexnet.predict(network, images)               the most probable classes of image files
    alexnet.from_pretrained(path)                  a trained network from a folder, checkpoint or weights file
    alexnet.save_pretrained(network, folder)       model.safetensors + config.json + README.md
    alexnet.prepare(source, out)                   a folder or archive of images into a 256 x 256 store
    alexnet.TrainedNetwork, alexnet.Config         the types those return

Attributes load on first use, so `import alexnet` does not import torch (the command line chooses its
memory allocator before torch loads).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "list_models": ("alexnet.models.registry", "list_models"),
    "create_model": ("alexnet.models.registry", "create_model"),
    "load_config": ("alexnet.config", "load_config"),
    "Config": ("alexnet.config", "Config"),
    "fit": ("alexnet.train", "fit"),
    "evaluate": ("alexnet.evaluate", "evaluate_checkpoints"),
    "predict": ("alexnet.evaluate", "predict_images"),
    "from_pretrained": ("alexnet.pretrained", "from_pretrained"),
    "save_pretrained": ("alexnet.pretrained", "save_pretrained"),
    "prepare": ("alexnet.data.prepare", "prepare_store"),
    "TrainedNetwork": ("alexnet.models.build", "TrainedNetwork"),
}

__all__ = [
    "Config",
    "TrainedNetwork",
    "__version__",
    "create_model",
    "evaluate",
    "fit",
    "from_pretrained",
    "list_models",
    "load_config",
    "predict",
    "prepare",
    "save_pretrained",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on first use
    from alexnet.config import Config, load_config
    from alexnet.data.prepare import prepare_store as prepare
    from alexnet.evaluate import evaluate_checkpoints as evaluate
    from alexnet.evaluate import predict_images as predict
    from alexnet.models.build import TrainedNetwork
    from alexnet.models.registry import create_model, list_models
    from alexnet.pretrained import from_pretrained, save_pretrained
    from alexnet.train import fit


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
