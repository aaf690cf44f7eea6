"""Shared pieces of the training tests: a tiny learnable store and a tiny config that trains in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet.checkpoint import TrainingState
from alexnet.config import Config, load_config, save_config
from alexnet.data.prepare import prepare_store

CLASSES = ("n01440764", "n02102040", "n02979186", "n03000684")  # real synsets, so names are looked up


def make_image_folder(
    root: Path, per_class: dict[str, int], size: int = 36, seed: int = 0, classes: tuple[str, ...] = CLASSES
) -> Path:
    """PNG images in root/<split>/<class>/, each class a distinct colour and stripe pattern plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in per_class.items():
        for c, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            base = np.zeros((size, size, 3))
            base[..., c % 3] = 160.0
            base += 60.0 * np.sin((xx if c < 2 else yy)[..., None] * (0.4 + 0.3 * c))
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def make_store(
    tmp: Path, n_train: int = 32, n_val: int = 8, size: int = 36, classes: tuple[str, ...] = CLASSES
) -> Path:
    """A prepared store of len(classes) classes, n_train / n_val images per class, `size` px."""
    source = make_image_folder(tmp / "images", {"train": n_train, "val": n_val}, size=size, classes=classes)
    out = tmp / "store"
    prepare_store(source, out, size=size, workers=1, progress=False)
    return out


def tiny_config(store: Path, *overrides: str) -> Config:
    """The CIFAR-sized four-layer net on the tiny store: a few milliseconds a step."""
    return load_config(
        None,
        [
            "model.name=cifar_relu",
            f"model.num_classes={len(CLASSES)}",
            "model.input_size=32",
            "model.dropout=0.5",
            f"data.store={store}",
            "data.batch_size=8",
            "data.eval_batch_size=16",
            "data.in_memory=true",
            "data.workers=0",
            "data.crop=32",
            "data.input_scale=64.0",
            "data.lighting_std=0.0",
            "optim.lr=0.01",
            "schedule.kind=step",
            "schedule.milestones=[2]",
            "run.epochs=3",
            "run.device=cpu",
            "run.checkpoint_every_minutes=0.0",
            *overrides,
        ],
    )


def write_config(config: Config, path: Path) -> Path:
    save_config(config, path)
    return path


def save_trained(
    path: Path, model: torch.nn.Module, config: Config, classes, class_names, mean: torch.Tensor
) -> Path:
    """A checkpoint of `model` as training writes it (weights, config, classes, mean), without resume state."""
    config = config.with_num_classes(len(classes), "the test's classes")
    TrainingState(model.state_dict(), config, list(classes), list(class_names), mean).save(path)
    return path


def alexnet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "alexnet", *args]


def env_one_thread() -> dict[str, str]:
    """Subprocess environment: one thread, so runs in different processes compute bit-identically."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def checkpoint_step(path: Path) -> int:
    """The step of the checkpoint at `path`, or -1 while there is none (reads the atomically renamed file)."""
    import torch

    try:
        return int(torch.load(path, weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def wait_for_step(proc: subprocess.Popen, path: Path, step: int, timeout: float = 120.0) -> int:
    """Poll until the checkpoint at `path` reaches `step` (or the process ends); returns the step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = checkpoint_step(path)
        if seen >= step or proc.poll() is not None:
            return seen
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not reach step {step} within {timeout} s")
