"""`alexnet export`: a checkpoint's weights as safetensors, or the network as ONNX.

Safetensors holds the tensors and, as string metadata, the model name, the classes and their names and the
resolved config (JSON), so the file rebuilds the network: `create_model(meta["model"], ...)` then
`load_state_dict`. ONNX takes one normalised crop (N, 3, crop, crop) and returns logits (N, classes); the
input normalisation is described in the model's metadata properties. Either way the training store's mean
image, which test-time input needs (Section 2), is written beside the file as NAME.mean.npy (float32
(3, S, S), 0..255; cut it at the crop's window).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from alexnet.checkpoint import FORMAT, save_weights
from alexnet.config import config_to_dict
from alexnet.errors import require
from alexnet.fsutil import atomic_write
from alexnet.models.build import TrainedNetwork, load_trained


def _metadata(loaded: TrainedNetwork, out: Path) -> dict[str, str]:
    return {
        "format": FORMAT,
        "input_mean_file": mean_path(out).name,
        "model": loaded.config.model.name,
        "classes": json.dumps(loaded.classes),
        "class_names": json.dumps(loaded.class_names),
        "config": json.dumps(config_to_dict(loaded.config)),
    }


def export_safetensors(loaded: TrainedNetwork, out: Path) -> Path:
    save_weights(loaded.model.state_dict(), out, _metadata(loaded, out))
    return out


def export_onnx(loaded: TrainedNetwork, out: Path, opset: int = 17) -> Path:
    """Trace the network in eval mode with a dynamic batch dimension (TorchScript-based exporter)."""
    onnx = require("onnx", "onnx", "ONNX export")

    crop = loaded.config.data.crop
    example = torch.zeros(1, 3, crop, crop)
    torch.onnx.export(
        loaded.model,
        (example,),
        str(out),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    model = onnx.load(str(out))
    for key, value in {
        **_metadata(loaded, out),
        "input": f"(N, 3, {crop}, {crop}) float32: (RGB 0..255 minus the "
        f"mean image) / {loaded.config.data.input_scale}, normalize={loaded.config.data.normalize}",
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return out


EXPORTERS = {"safetensors": export_safetensors, "onnx": export_onnx}


def export(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None) -> Path:
    """Write `checkpoint` as `fmt` ("safetensors" or "onnx") to `out` (default: beside it); returns the
    path."""
    if fmt not in EXPORTERS:
        raise ValueError(f"export format {fmt!r} is not one of {', '.join(EXPORTERS)}")
    path = Path(out) if out is not None else Path(checkpoint).with_suffix(f".{fmt}")
    return export_trained(load_trained(checkpoint), fmt, path)


def export_trained(loaded: TrainedNetwork, fmt: str, out: Path) -> Path:
    """Write a network in memory (loaded from a checkpoint, or imported by `alexnet.caffe`) as `fmt`, with
    its mean image beside it (`mean_path`); returns `out`. A missing optional package fails before anything
    is written."""
    if fmt == "onnx":
        require("onnx", "onnx", "ONNX export")
    atomic_write(mean_path(out), lambda f: np.save(f, loaded.mean.numpy().astype(np.float32)))
    return EXPORTERS[fmt](loaded, out)


def mean_path(out: Path) -> Path:
    """Where the mean image of an exported file `out` goes: NAME.mean.npy beside it."""
    return out.with_suffix(".mean.npy")
