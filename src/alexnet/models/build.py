"""From a config or a checkpoint to a network: building, loading trained weights, fine-tune surgery.

Everything that turns a `ModelConfig` (or a checkpoint) into an `nn.Module` lives here, beside the
registry, so that evaluation, prediction, export and the analyses load a network without importing
the training code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.checkpoint import TrainingState, load_weights, read_config
from alexnet.config import Config, ModelConfig
from alexnet.data.augment import Augmenter
from alexnet.errors import CheckpointError
from alexnet.models.alexnet import INITS
from alexnet.models.registry import create_model, list_models


def check_model_config(m: ModelConfig) -> None:
    """Refuse a model name or init the registry does not know, naming the valid ones."""
    if m.name not in list_models():
        raise ValueError(f"model.name = {m.name!r} is not a registered model; choose one of: "
                         + ", ".join(list_models()))
    if m.init not in INITS:
        raise ValueError(f"model.init = {m.init!r} is not one of {', '.join(map(repr, INITS))}")


def build_model(m: ModelConfig) -> nn.Module:
    """The configured network (`alexnet.models.create_model`); `m.num_classes` must be resolved."""
    check_model_config(m)
    if m.num_classes is None:
        raise ValueError("model.num_classes is not resolved: take it from the store (Config.with_num_classes)")
    overrides: dict[str, Any] = {"input_size": m.input_size, "dropout": m.dropout, "dropout_form": m.dropout_form,
                                 "lrn_alpha": m.lrn_alpha}
    if m.init != "paper":  # only the paper family takes an init; its default is "paper"
        overrides["init"] = m.init
    return create_model(m.name, m.num_classes, **overrides)


def classifier_name(model: nn.Module) -> str:
    """The name of the last fully connected layer (fc8 for the paper's net): the one fine-tuning replaces."""
    names: list[str] = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no fully connected layer to replace")
    return names[-1]


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (.pt) or a weights file (.safetensors)."""
    path = Path(path)
    return load_weights(path)[0] if path.suffix == ".safetensors" else TrainingState.load(path).model


def read_trained_config(path: str | os.PathLike[str]) -> Config:
    """The resolved config a checkpoint (.pt) or an exported weights file (.safetensors) was trained with."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return TrainingState.load(path).config
    metadata = load_weights(path)[1]
    if "config" not in metadata:
        raise CheckpointError(f"{path} carries no training config in its metadata (not written by alexnet export)")
    return read_config(json.loads(metadata["config"]), metadata.get("format"), str(path))


def finetune_config(
    config: Config, checkpoint: str | os.PathLike[str], model_overrides: Mapping[str, Any] | None = None
) -> Config:
    """The config of fine-tuning `checkpoint` with `config`'s recipe.

    From the checkpoint come the network (the `[model]` section, with the class count left to the new
    store) and what its input depends on (crop, normalisation, input scale); from `config` the data
    store, the optimiser, schedule, budget and the rest. `model_overrides` ({key: value} of `[model]`)
    are the user's own choices, applied on top; an architecture that cannot take the weights fails when
    they are loaded, naming the layers that do not fit.
    """
    source = read_trained_config(checkpoint)
    model = {**asdict(source.model), "num_classes": None, **(model_overrides or {})}
    data = replace(
        config.data, crop=source.data.crop, normalize=source.data.normalize, input_scale=source.data.input_scale
    )
    return replace(config, model=ModelConfig(**model), data=data)


def load_pretrained(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load every weight of a checkpoint or weights file except the classifier's, which keeps its fresh
    initialisation (the paper's pre-train-then-fine-tune "CNN*" rows, Section 6).
    Returns the names of the parameters left initialised."""
    state = read_weights(path)
    head = classifier_name(model)
    kept = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in kept.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: {len(wrong)} weight(s) differ in shape "
            f"({', '.join(wrong[:3])}); fine-tune the checkpoint's own architecture (leave model.name, "
            f"model.input_size unset)"
        )
    missing, unexpected = model.load_state_dict(kept, strict=False)
    expected = {f"{head}.weight", f"{head}.bias"}
    if unexpected or set(missing) - expected:
        raise ValueError(
            f"{path} does not match the model: missing {sorted(set(missing) - expected)}, unexpected "
            f"{sorted(unexpected)}; fine-tune from a checkpoint of the same architecture (model.name)"
        )
    return sorted(missing)


@dataclass
class TrainedNetwork:
    """A trained network with what it needs at test time: its config, class ids and names, mean image."""

    model: nn.Module
    config: Config
    classes: list[str]
    class_names: list[str]
    mean: torch.Tensor  # (3, S, S) float32, the training store's mean image
    path: Path

    def augmenter(self, device: torch.device) -> Augmenter:
        """Test-time views (centre crop, ten crops) normalised as in training. PCA lighting noise is a
        training augmentation only (Section 4.1), so it is off here."""
        return Augmenter(replace(self.config.data, lighting_std=0.0), self.mean, device=device)


def load_trained(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> TrainedNetwork:
    """Rebuild the network a checkpoint (`latest.pt`, `best.pt`) or an exported weights file
    (`.safetensors` with its `NAME.mean.npy` beside it, as `alexnet export` and `alexnet import-caffe`
    write them) was trained as, and load its weights."""
    path = Path(path)
    if path.suffix == ".safetensors":
        weights, metadata = load_weights(path)
        config = read_trained_config(path)
        mean_path = path.with_name(metadata.get("input_mean_file", path.with_suffix(".mean.npy").name))
        if not mean_path.is_file():
            raise CheckpointError(f"{path} needs its mean image {mean_path} beside it (written by alexnet export)")
        mean = torch.from_numpy(np.load(mean_path, allow_pickle=False).astype(np.float32))
        classes = json.loads(metadata.get("classes", "[]"))
        names = json.loads(metadata.get("class_names", "[]")) or classes
    else:
        state = TrainingState.load(path)
        weights, config, classes, names, mean = (state.model, state.config, state.classes, state.class_names,
                                                 state.mean)
    return trained_network(weights, config, classes, names, mean, path, device)


def trained_network(weights: dict[str, torch.Tensor], config: Config, classes: list[str], names: list[str],
                    mean: torch.Tensor, path: Path, device: torch.device | str = "cpu") -> TrainedNetwork:
    """The configured network with `weights` loaded, in evaluation mode on `device` (`path` names them in errors)."""
    model = build_model(config.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit {config.model.name}: {e}") from None
    model.to(device).eval()
    return TrainedNetwork(model, config, classes, names, mean, path)
