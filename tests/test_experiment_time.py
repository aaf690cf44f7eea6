"""The time-to-accuracy experiment end to end at a tiny budget (the CIFAR-sized net stands in for the
paper's), its stop rule and its measure; nothing here asserts the scientific outcome."""

from __future__ import annotations

from dataclasses import replace

import pytest

from alexnet.experiments import time_to_accuracy as tta
from alexnet.experiments.runner import Runner
from helpers_train import make_store

TINY = ("model.name=cifar_relu", "model.init=paper", "model.input_size=32", "data.crop=32", "data.input_scale=64.0",
        "data.batch_size=8", "data.eval_batch_size=16", "data.in_memory=true", "data.workers=0",
        "run.device=cpu", "run.precision=fp32", "run.checkpoint_every_minutes=0.0")


def test_reached_is_the_first_epoch_end_at_or_above_the_target():
    metrics = [{"epoch": 1.0, "val_top1_error": 0.5, "wall_time_s": 60.0},
               {"epoch": 2.0, "val_top1_error": 0.39, "wall_time_s": 120.0},
               {"epoch": 3.0, "val_top1_error": 0.3, "wall_time_s": 180.0}]
    assert tta.reached(metrics, 0.6) == {"epoch": 2.0, "wall_s": 120.0, "accuracy": pytest.approx(0.61)}
    assert tta.reached(metrics, 0.7)["epoch"] == 3.0 and tta.reached(metrics, 0.8) is None
    assert not tta.reached_target(metrics[:2]) and tta.reached_target(metrics)


@pytest.mark.slow
def test_time_to_accuracy_end_to_end(tmp_path):
    store = make_store(tmp_path, n_train=6, n_val=3, size=36)
    budget = replace(tta.BUDGETS["smoke"], store=str(store))
    runner = Runner(tmp_path / "runs")
    results = tta.run_experiment(runner, 2, budget, (f"data.store={store}", *TINY))
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    for r in results["runs"]:
        assert all(a is not None for a in r["val_top1_accuracy"])  # validated after every epoch
        assert r["epochs_trained"] <= 2
    assert set(results["targets"]) == {"60", "70"}
    assert results["table"]["setting"] == "demo recipe, validated after every epoch"
    again = Runner(tmp_path / "runs")
    assert tta.run_experiment(again, 2, budget, (f"data.store={store}", *TINY))["runs"] == results["runs"]
    assert again.trained_now == []  # both runs finished: nothing trained again
    tta.plot(results, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 5_000
