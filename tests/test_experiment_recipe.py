"""The paper-recipe experiment end to end at a tiny budget (the CIFAR-sized net stands in for the
paper's), and its plateau measure; nothing here asserts the scientific outcome."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from alexnet.experiments import paper_recipe
from alexnet.experiments.runner import Runner
from helpers_train import make_store

TINY = ("model.name=cifar_relu", "model.init=paper", "model.input_size=32", "data.crop=32", "data.input_scale=64.0",
        "data.batch_size=8", "data.eval_batch_size=16", "data.workers=0", "data.lighting_std=0.0",
        "run.device=cpu", "run.checkpoint_every_minutes=0.0")


def test_plateau_counts_the_epochs_at_chance_loss():
    chance = math.log(10)
    metrics = [{"train_loss": chance + 0.01}, {"train_loss": chance - 0.02}, {"train_loss": 1.5},
               {"train_loss": chance}]
    assert paper_recipe.plateau_epochs(metrics, 10) == 2  # the return to chance at epoch 4 does not count
    assert paper_recipe.plateau_epochs([{"train_loss": 1.0}], 10) == 0
    blown_up = [{"train_loss": 3.67}, {"train_loss": chance}, {"train_loss": chance + 0.001}]
    assert paper_recipe.plateau_epochs(blown_up, 10) == 2  # the plateau starts after the first epoch
    assert paper_recipe.on_plateau_at_end(blown_up, 10) and not paper_recipe.on_plateau_at_end(metrics[:3], 10)


@pytest.mark.slow
def test_paper_recipe_end_to_end(tmp_path):
    store = make_store(tmp_path, n_train=6, n_val=3, size=36)
    budget = replace(paper_recipe.BUDGETS["smoke"], store=str(store))
    results = paper_recipe.run_experiment(Runner(tmp_path / "runs"), 1, budget, (f"data.store={store}", *TINY))
    assert set(results["recipes"]) == {"paper", "cuda-convnet", "paper-init", "demo"}
    assert results["classes"] == 4 and results["chance_loss"] == pytest.approx(math.log(4))
    for r in results["recipes"].values():
        assert len(r["runs"]) == 1 and len(r["runs"][0]["train_loss"]) == 2
        assert r["runs"][0]["val_top1_accuracy"][-1] is not None
        assert r["runs"][0]["live_units"] == [{}, {}]  # counted after each epoch; the CIFAR net has no fc6, fc7
    assert results["config"]["paper"]["schedule"]["kind"] == "plateau"
    assert results["config"]["paper-init"]["model"]["init"] == "paper"  # TINY's init, as for every recipe
    assert results["config"]["demo"]["schedule"]["kind"] == "linear"
    assert "paper:" in results["table"]["ours"] and "paper-init" in results["table"]["setting"]
    paper_recipe.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 5_000


def test_live_units_counts_fc6_and_fc7_units_that_fire_on_any_input():
    from alexnet.analysis.live import live_units, probe_indices
    from alexnet.models import create_model

    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=10, init="kaiming").train()
    x = torch.randn(6, 3, 224, 224)
    with torch.no_grad():
        fc7 = model.act7(model.fc7(model.drop6(model.eval().act6(model.fc6(model.conv_features(x).flatten(1))))))
    counts = live_units(model.train(), x, batch=4)
    assert model.training  # its mode is given back
    assert counts["fc7"] == int((fc7 > 0).any(0).sum()) and 0 < counts["fc7"] < 4096
    with torch.no_grad():
        model.fc7.bias.fill_(-1e6)  # every fc7 ReLU at 0 for every input: a dead layer
    assert live_units(model, x) == {"fc6": counts["fc6"], "fc7": 0}
    assert list(probe_indices(10, 4)) == [0, 3, 6, 9] and len(probe_indices(3925)) == 256


def test_the_recipe_verdict_needs_seeds_and_a_run_off_the_plateau():
    from alexnet.experiments.paper_recipe import verdict

    def results(values, plateau):
        return {"classes": 10, "recipes": {"paper": {"final_val_top1_accuracy": {"values": values},
                                                     "on_plateau_at_end": plateau}}}

    assert verdict(results([0.62, 0.60, 0.64], [False] * 3)).startswith("reproduced")
    assert verdict(results([0.62, 0.10, 0.64], [False, True, False])) == "not at this budget"
    assert verdict(results([0.62], [False])).startswith("not testable")
