"""Checkpoints that survive crashes and cannot run code.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and fsynced, then
renamed over the target and the folder is fsynced, so a kill or a full disk at any moment leaves the
previous checkpoint whole. Loads first verify the CRC-32 of every entry of the checkpoint's zip archive
(torch.load does not), then use `torch.load(weights_only=True)`, whose unpickler only rebuilds tensors
and plain containers: a checkpoint carrying a pickled callable is refused before anything runs.
Weights to share travel as safetensors, which hold tensors and string metadata only.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from alexnet.fsutil import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or carrying code."""


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


def rng_state() -> dict:
    """Every random generator a training step draws from: torch (CPU and CUDA), numpy, Python."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


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
