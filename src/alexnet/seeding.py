"""Every random number of a run is a function of the seed: derived generators and saved states.

Batches and augmentation draw from generators derived from (seed, epoch, batch index, rank, stream),
so a run resumed at any batch redoes exactly the same draws without saved generator state; what the
model draws itself (dropout masks) comes from the global generators, whose states the checkpoint
carries (`rng_state`, `set_rng_state`).
"""

from __future__ import annotations

import random

import numpy as np
import torch

# Streams keep the loader's shuffle and the augmentation independent for the same seed.
SHUFFLE_STREAM = 0
AUGMENT_STREAM = 1


def seed_int(*numbers: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence hash)."""
    if any(n < 0 for n in numbers):
        raise ValueError(f"seed components {numbers} must be non-negative integers")
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, np.uint64)[0] >> 1)


def generator(*numbers: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded with `seed_int(*numbers)`."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed_int(*numbers))
    return gen


def batch_generator(
    seed: int, epoch: int, batch_idx: int, device: torch.device | str = "cpu", rank: int = 0
) -> torch.Generator:
    """The augmentation generator of one training batch, a pure function of its arguments.

    ``rank`` keeps the data-parallel ranks' draws independent; resuming at (epoch, batch_idx)
    needs no saved generator state.
    """
    return generator(seed, epoch, batch_idx, rank, AUGMENT_STREAM, device=device)


def shuffle_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch's shuffle (the same on every rank, so they split one order)."""
    return generator(seed, epoch, SHUFFLE_STREAM)


def rng_state() -> dict:
    """Every global random generator a training step draws from: torch (CPU and CUDA), numpy, Python."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned (after a round trip through a checkpoint)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
