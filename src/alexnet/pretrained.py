"""Trained networks as a folder people know how to use: `save_pretrained` and `from_pretrained`.

    DIR/model.safetensors   the weights, and the training store's mean image as the tensor `input_mean`
    DIR/config.json         architecture, input size and normalisation, the dropout and LRN conventions,
                            class ids and names, and the whole training config
    DIR/README.md           a model card written from the run: data, epochs, metrics, the command that trains
                            it again, how to load it
    DIR/training_config.toml  the resolved training config, as `alexnet train --config` takes it

`from_pretrained` also takes a training checkpoint (`latest.pt`, `best.pt`) or a weights file written by
`alexnet export` / `alexnet import-caffe`, and always returns a `TrainedNetwork`: the network in evaluation
mode with what test-time input needs (`augmenter`, `classes`, `class_names`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from alexnet.checkpoint import FORMAT as CHECKPOINT_FORMAT
from alexnet.checkpoint import TrainingState, load_weights, read_config, save_weights
from alexnet.config import config_to_dict, save_config
from alexnet.errors import CheckpointError
from alexnet.fsutil import atomic_write, write_json
from alexnet.models.build import TrainedNetwork, load_trained, trained_network

FORMAT = "alexnet-pretrained-1"
WEIGHTS, CONFIG, CARD, TOML = "model.safetensors", "config.json", "README.md", "training_config.toml"
MEAN_KEY = "input_mean"


def save_pretrained(source: TrainedNetwork | str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path:
    """Write a trained network (or the network of a checkpoint or weights file) as DIR/{model.safetensors,
    config.json, README.md}; returns DIR. Each file is written atomically; the folder may exist."""
    metrics: list[dict[str, Any]] = []
    if not isinstance(source, TrainedNetwork):
        path = Path(source)
        if path.suffix == ".pt":
            metrics = [m for m in TrainingState.load(path).metrics if not m.get("partial")]
        source = from_pretrained(path)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in source.model.state_dict().items()}
    if MEAN_KEY in state:
        raise ValueError(f"the network has a parameter named {MEAN_KEY!r}, which the folder format reserves")
    state[MEAN_KEY] = source.mean.float()
    save_weights(state, directory / WEIGHTS, {"format": FORMAT})
    write_json(directory / CONFIG, describe(source))
    save_config(source.config, directory / TOML)
    card = model_card(source, metrics)
    atomic_write(directory / CARD, lambda f: f.write(card.encode()))
    return directory


def describe(trained: TrainedNetwork) -> dict[str, Any]:
    """config.json: what a user of the weights needs to know, then the training config itself."""
    c = trained.config
    built = getattr(trained.model, "config", None)  # the paper family's AlexNetConfig (resolved conventions)
    lrn = built.lrn_params if built is not None and getattr(built, "lrn", False) else None
    dropout_form = getattr(built, "dropout_form", c.model.dropout_form)
    return {
        "format": FORMAT,
        "checkpoint_format": CHECKPOINT_FORMAT,
        "architecture": c.model.name,
        "num_classes": len(trained.classes),
        "input": {
            "crop": c.data.crop,
            "channels": "RGB",
            "range": "0..255",
            "normalize": c.data.normalize,
            "mean_image": f"{WEIGHTS}:{MEAN_KEY} (3 x S x S, 0..255; cut at the crop's window)",
            "input_scale": c.data.input_scale,
            "formula": f"(image - mean) / {c.data.input_scale}",
        },
        "dropout": {"p": c.model.dropout, "form": dropout_form},
        "lrn": None if lrn is None else {**asdict(lrn), "multiplier": lrn.multiplier},
        "classes": trained.classes,
        "class_names": trained.class_names,
        "training_config": config_to_dict(c),
    }


def model_card(trained: TrainedNetwork, metrics: Sequence[Mapping[str, Any]]) -> str:
    c = trained.config
    lines = [
        f"# {c.model.name}: a network trained with alexnet",
        "",
        f"- Architecture: `{c.model.name}`, {len(trained.classes)} classes, input {c.data.crop} x {c.data.crop}",
        f"- Data: store `{Path(str(c.data.store)).name}`",
        f"- Recipe: optimiser `{c.optim.kind}` (lr {c.optim.lr:g}, momentum {c.optim.momentum:g}, weight decay "
        f"{c.optim.weight_decay:g}), schedule `{c.schedule.kind}`, batch {c.data.batch_size}, precision "
        f"{c.run.precision}, seed {c.run.seed}",
    ]
    if metrics:
        last = metrics[-1]
        top1 = last.get("val_top1_error")
        loss = last.get("train_loss", float("nan"))
        lines.append(f"- Trained: {last.get('epoch')} epochs; last training loss {loss:.3f}"
                     + (f", validation top-1 error {100 * top1:.1f} % (centre crop)" if top1 is not None else ""))
    lines += [
        "",
        "## Train it again",
        "",
        "```sh",
        f"alexnet train --config {TOML} --data {Path(str(c.data.store)).name} --run-dir runs/again",
        "```",
        "",
        f"({TOML} is the resolved config this network was trained with; `--data` names the prepared store.)",
        "",
        "## Use",
        "",
        "```python",
        "import alexnet",
        "",
        "net = alexnet.from_pretrained(\"THIS_FOLDER\")",
        "print(alexnet.predict(net, [\"photo.jpg\"]))",
        "```",
        "",
        "Input: RGB 0..255 minus the mean image (stored in model.safetensors as `input_mean`), divided by "
        f"{c.data.input_scale:g}; `net.augmenter(device)` makes the centre and ten-crop views.",
        "",
        f"config.json holds the classes, the conventions (dropout form `{c.model.dropout_form}`, LRN reading "
        f"`{c.model.lrn_alpha}`) and the whole training config.",
        "",
    ]
    return "\n".join(lines)


def from_pretrained(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> TrainedNetwork:
    """The network of a pretrained folder (`save_pretrained`), a training checkpoint (.pt) or an exported or
    imported weights file (.safetensors with its mean image beside it), in evaluation mode on `device`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file (expected a folder written by save_pretrained, "
                                "a checkpoint .pt or a .safetensors file)")
    if not path.is_dir():
        return load_trained(path, device)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} has no {name}: not a folder written by save_pretrained")
    described = json.loads((path / CONFIG).read_text())
    if described.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG}: format {described.get('format')!r}, expected {FORMAT!r}")
    config = read_config(described["training_config"], described.get("checkpoint_format"), str(path / CONFIG))
    weights, _ = load_weights(path / WEIGHTS)
    mean = weights.pop(MEAN_KEY, None)
    if mean is None:
        raise CheckpointError(f"{path / WEIGHTS} has no {MEAN_KEY!r} tensor (the mean image)")
    return trained_network(weights, config, described["classes"], described["class_names"], mean, path, device)
