"""Checkpoints: atomic round trip, random states, safetensors weights."""

import random

import numpy as np
import pytest
import torch

from alexnet.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)


def test_round_trip_keeps_tensors_and_plain_data(tmp_path):
    state = {
        "model": {"w": torch.randn(3, 4)},
        "epoch": 2,
        "metrics": [{"loss": 1.5}],
        "config": {"a": [1, 2]},
        "names": ["tench", "église"],
    }
    path = tmp_path / "c.pt"
    save_checkpoint(state, path)
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert {k: v for k, v in back.items() if k != "model"} == {k: v for k, v in state.items() if k != "model"}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_overwrite_replaces_whole_file(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"x": torch.zeros(1000)}, path)
    save_checkpoint({"x": torch.ones(10)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(10))


def test_rng_states_restore_every_generator(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_safetensors_weights_round_trip(tmp_path):
    sd = {"conv1.weight": torch.randn(4, 3, 2, 2), "fc8.bias": torch.randn(5)}
    save_weights(sd, tmp_path / "w.safetensors", {"model": "alexnet"})
    back, meta = load_weights(tmp_path / "w.safetensors")
    assert meta == {"model": "alexnet"} and all(torch.equal(back[k], sd[k]) for k in sd)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors cannot be read"):
        load_weights(tmp_path / "bad.safetensors")
