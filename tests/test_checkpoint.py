"""Checkpoints: atomic round trip, random states, safetensors weights."""

import random

import numpy as np
import pytest
import torch

from alexnet.checkpoint import FORMAT, TrainingState, load_checkpoint, load_weights, save_checkpoint, save_weights
from alexnet.config import load_config
from alexnet.errors import CheckpointError
from alexnet.seeding import rng_state, set_rng_state


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


def _state(tmp_path) -> TrainingState:
    config = load_config(None, ["model.name=cifar_relu", "model.input_size=32", "data.crop=32"])
    return TrainingState(
        model={"w": torch.randn(2, 2)},
        config=config.with_num_classes(3, "test"),
        classes=["a", "b", "c"],
        class_names=["A", "B", "C"],
        mean=torch.zeros(3, 4, 4),
        step=7,
        optimizer={"state": {}, "param_groups": []},
        rng=[rng_state()],
    )


def test_training_state_round_trip_and_inference_copy(tmp_path):
    state = _state(tmp_path)
    state.save(tmp_path / "s.pt")
    back = TrainingState.load(tmp_path / "s.pt")
    assert back.config == state.config and back.step == 7 and back.resumable
    assert torch.equal(back.model["w"], state.model["w"])
    state.for_inference().save(tmp_path / "best.pt")
    best = TrainingState.load(tmp_path / "best.pt")
    assert not best.resumable and "optimizer" not in load_checkpoint(tmp_path / "best.pt")


def test_unknown_format_and_foreign_dicts_are_refused_with_the_reason(tmp_path):
    raw = _state(tmp_path).to_dict()
    save_checkpoint({**raw, "format": "alexnet-checkpoint-9"}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=r"format 'alexnet-checkpoint-9'.*upgrade alexnet"):
        TrainingState.load(tmp_path / "new.pt")
    save_checkpoint({"model": raw["model"]}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint of this package"):
        TrainingState.load(tmp_path / "foreign.pt")
    save_checkpoint({k: v for k, v in raw.items() if k != "classes"}, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"missing \['classes'\]"):
        TrainingState.load(tmp_path / "cut.pt")


def test_a_checkpoint_in_the_layout_written_before_training_state_still_loads(tmp_path):
    """The dict train.py wrote before the schema had a class of its own (format 1, a config with every key)."""
    old_config = {
        "model": {"name": "cifar_relu", "num_classes": 3, "input_size": 32, "init": "paper", "dropout": 0.5},
        "data": {"store": "s", "batch_size": 8, "batch_is_global": True, "eval_batch_size": 16, "in_memory": True,
                 "workers": 0, "crop": 32, "random_crop": True, "flip": True, "lighting_std": 0.0,
                 "normalize": "mean_image", "input_scale": 64.0},
        "optim": {"kind": "paper", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005, "label_smoothing": 0.0},
        "schedule": {"kind": "step", "factor": 0.1, "patience": 5, "max_drops": 3, "milestones": [2],
                     "warmup_epochs": 0.0},
        "run": {"epochs": 3, "budget_steps": 0, "budget_minutes": 0.0, "seed": 0, "precision": "fp32",
                "channels_last": False, "compile": False, "device": "cpu", "threads": 0, "model_parallel": 1,
                "checkpoint_every_minutes": 0.0, "checkpoint_every_epochs": 1, "checkpoint_every_steps": 0},
    }
    old = {
        "format": FORMAT, "model": {"w": torch.ones(1)}, "optimizer": {}, "schedule": {"lr": 0.01},
        "epoch": 1, "batch": 2, "step": 10, "epoch_stats": {"loss_sum": 1.0, "errors": 1, "images": 8,
                                                             "steps": 1, "seconds": 0.1},
        "rng": [rng_state()], "config": old_config, "classes": ["a", "b", "c"], "class_names": ["A", "B", "C"],
        "mean": torch.zeros(3, 36, 36), "metrics": [], "best": 0.5, "elapsed": 12.0,
    }
    save_checkpoint(old, tmp_path / "old.pt")
    state = TrainingState.load(tmp_path / "old.pt")
    assert state.config.model.num_classes == 3 and state.config.data.input_scale == 64.0
    assert state.step == 10 and state.resumable and state.epoch_stats["images"] == 8
