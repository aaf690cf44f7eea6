"""Checkpoints that survive crashes and cannot run code.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and fsynced, then
renamed over the target and the folder is fsynced, so a kill or a full disk at any moment leaves the
previous checkpoint whole. Loads first verify the CRC-32 of every entry of the checkpoint's zip archive
(torch.load does not), then use `torch.load(weights_only=True)`, whose unpickler only rebuilds tensors
and plain containers: a checkpoint carrying a pickled callable is refused before anything runs.
Weights to share travel as safetensors, which hold tensors and string metadata only.

`TrainingState` is the one definition of what a checkpoint holds: training writes it, and evaluate,
predict, export, fine-tuning and the tests read it through `TrainingState.load`, which checks the
format version.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from alexnet.config import Config, config_from_dict, config_to_dict
from alexnet.errors import CheckpointError
from alexnet.fsutil import atomic_write
from alexnet.resume import upgrade_v1_config

# The layout of `TrainingState` as saved. Version 2 added the config keys model.dropout_form, model.lrn_alpha,
# optim.decay_biases and optim.bias_lr_scale; a version-1 checkpoint reads with the values that reproduce
# what it computed (`alexnet.resume.upgrade_v1_config`): inverted dropout, alpha undivided, biases decayed.
FORMAT = "alexnet-checkpoint-2"
FORMAT_V1 = "alexnet-checkpoint-1"


def read_config(data: dict, fmt: str | None, source: str) -> Config:
    """The Config a checkpoint or an export of format `fmt` recorded (None: an export from before exports
    named their format, i.e. version 1)."""
    return config_from_dict(data if fmt == FORMAT else upgrade_v1_config(data), source)


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Atomically write `state` (tensors, numbers, strings and containers of them) with torch.save."""
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        # torch's zip writer may raise its own RuntimeError while closing, after the OSError of a full disk
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise CheckpointError(
            f"could not write checkpoint {path}: {cause.strerror or cause}; the previous checkpoint there is "
            "intact (free disk space or choose another --run-dir)"
        ) from e


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint`, refusing anything but tensors and plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # torch.load does not check the zip's CRC-32s, so a flipped bit in a tensor would load silently
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is None:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines()
        reason = next(
            (line.strip() for line in lines if "GLOBAL" in line or "WeightsUnpickler" in line), lines[0]
        )
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data (loading it could run code), "
            f"so it was refused: {reason}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "use an earlier checkpoint"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {bad} fails its CRC-32 check; use an earlier checkpoint"
        )
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def save_weights(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> None:
    """Weights only, as safetensors (no code, loadable from any language); `metadata` values are strings."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    try:
        atomic_write(path, lambda f: f.write(save(tensors, metadata=metadata)))
    except OSError as e:
        raise CheckpointError(f"could not write weights {path}: {e.strerror or e}") from e


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) from a safetensors file written by `save_weights`."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"weights file {path} cannot be read as safetensors: {e}") from None


@dataclass
class TrainingState:
    """What a checkpoint holds: enough to continue a run exactly, and to use the network without its store.

    ``latest.pt`` has every field; ``best.pt`` (see `for_inference`) leaves out the optimizer's velocities
    and the random states, which only resuming needs.
    """

    model: dict[str, torch.Tensor]  # the single-device layout, whatever the placement during training
    config: Config  # the resolved config (model.num_classes set)
    classes: list[str]  # class ids (wnids, folder names) in label order
    class_names: list[str]  # human names, same order
    mean: torch.Tensor  # (3, S, S) float32, the training store's mean image: the input normalisation
    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps done
    best: float = math.inf  # the lowest validation top-1 error so far
    elapsed: float = 0.0  # seconds of training wall time so far
    metrics: list[dict] = field(default_factory=list)  # one record per evaluated epoch (metrics.jsonl)
    epoch_stats: dict = field(default_factory=dict)  # running sums of the epoch in progress
    schedule: dict = field(default_factory=dict)  # the learning-rate schedule's state
    plan: dict | None = None  # a budgeted run's plan (alexnet.budget): total steps, measured costs
    optimizer: dict | None = None  # absent from best.pt
    rng: list[dict] | None = None  # every process's random states, in rank order; absent from best.pt

    @property
    def resumable(self) -> bool:
        return self.optimizer is not None and self.rng is not None

    def for_inference(self) -> TrainingState:
        """The same state without what only resuming needs (best.pt)."""
        return dataclasses.replace(self, optimizer=None, rng=None)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config"] = config_to_dict(self.config)
        return {"format": FORMAT, **{k: v for k, v in out.items() if v is not None}}

    @classmethod
    def from_dict(cls, data: dict, source: str = "checkpoint") -> TrainingState:
        fmt = data.get("format")
        if fmt is None:
            raise CheckpointError(
                f"{source} is not a training checkpoint of this package (it has no format key; it holds "
                f"{', '.join(sorted(map(str, data))[:6])}); pass a latest.pt or best.pt from a run folder"
            )
        if fmt not in (FORMAT, FORMAT_V1):
            raise CheckpointError(
                f"{source} is a checkpoint of format {fmt!r}, which this version of alexnet (reads {FORMAT!r}) "
                "does not know; load it with the version that wrote it, or upgrade alexnet"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"format"}
        missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING} - set(data)
        if unknown or missing:
            raise CheckpointError(
                f"{source} does not have the layout of {FORMAT}: missing {sorted(missing)}, unexpected "
                f"{sorted(unknown)}"
            )
        values = {k: v for k, v in data.items() if k != "format"}
        values["config"] = read_config(values["config"], fmt, source)
        values["mean"] = values["mean"].float()
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        save_checkpoint(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TrainingState:
        return cls.from_dict(load_checkpoint(path, map_location), str(path))
