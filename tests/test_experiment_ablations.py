"""The ablations experiment end to end at a tiny budget (the CIFAR-sized net stands in for every variant:
nothing here asserts the scientific outcome), killed midway and resumed, its intervals and its table rows."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from alexnet.experiments import ablations
from alexnet.experiments.runner import Runner
from helpers_train import make_store

TINY = ("model.name=cifar_relu", "model.init=paper", "model.input_size=32", "data.crop=32", "data.input_scale=64.0",
        "data.batch_size=8", "data.eval_batch_size=16", "data.in_memory=true", "data.workers=0",
        "run.device=cpu", "run.precision=fp32", "run.checkpoint_every_minutes=0.0")


class Killed(Exception):
    pass


def test_holm_and_the_paired_test():
    assert ablations.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None}) == {
        "a": pytest.approx(0.03), "b": pytest.approx(0.06), "c": pytest.approx(0.06), "d": None}
    assert ablations.paired_t_p([0.01]) is None and ablations.paired_t_p([0.0, 0.0]) == 1.0
    assert ablations.paired_t_p([0.02, 0.02, 0.02]) == 0.0
    assert ablations.paired_t_p([0.01, 0.03, 0.02]) == pytest.approx(0.0742, abs=1e-3)  # t = 3.46, df 2


def test_verdicts():
    row = {"p_holm": 0.01, "paper_top1": 1.4, "top1_difference": 0.02, "top1_interval_seeds": [0.005, 0.03]}
    assert ablations.verdict(row) == "reproduced"
    assert ablations.verdict({**row, "top1_interval_seeds": [0.02, 0.03]}) == "direction only"
    assert ablations.verdict({**row, "top1_difference": -0.02}) == "opposite sign"
    assert ablations.verdict({**row, "p_holm": 0.2}) == "not at this budget"
    assert ablations.verdict({**row, "p_holm": None}).startswith("not testable")
    gap = {"p_holm": 0.01, "paper_top1": None, "gap_difference": 0.05}
    assert ablations.verdict(gap).startswith("reproduced (more overfitting")


def test_paired_bootstrap_and_seed_intervals():
    full = np.array([1, 1, 1, 1, 0, 0, 1, 1, 0, 1] * 30, dtype=bool)
    same = ablations.paired_bootstrap(full, full)
    assert same == [0.0, 0.0]
    worse = full.copy()
    worse[:60] = False  # 42 of the 300 images lost: +0.14 error, far from 0
    difference = (int(full.sum()) - int(worse.sum())) / len(full)
    lo, hi = ablations.paired_bootstrap(worse, full)
    assert 0 < lo < difference < hi
    assert ablations.interval_over_seeds([0.01]) is None
    lo, hi = ablations.interval_over_seeds([0.01, 0.03])
    assert lo < 0.02 < hi and lo < 0  # two seeds, t = 12.7: wide


@pytest.mark.slow
def test_ablations_run_end_to_end_resume_and_table(tmp_path, monkeypatch):
    store = make_store(tmp_path, n_train=6, n_val=3, size=36)
    variants = (ablations.VARIANTS[0], ablations.VARIANTS[1], ablations.VARIANTS[6])  # full, no-lrn, no-lighting
    monkeypatch.setattr(ablations, "VARIANTS", variants)
    budget = replace(ablations.BUDGETS["smoke"], store=str(store))
    overrides = (f"data.store={store}", *TINY)
    finished = []

    def kill_after_two(outcome):
        finished.append(outcome.key)
        if len(finished) == 2:
            raise Killed

    records = tmp_path / "records"
    with pytest.raises(Killed):
        ablations.run_experiment(Runner(tmp_path / "runs", on_finished=kill_after_two, records=records), 2,
                                 budget, overrides)
    runner = Runner(tmp_path / "runs", records=records)
    results = ablations.run_experiment(runner, 2, budget, overrides)
    assert len(runner.trained_now) == 6 - 2  # the two finished runs are not trained again
    keys = [r["variant"] for r in results["variants"]]
    assert keys == ["full", "no-lrn", "no-lighting"]
    for row in results["variants"]:
        assert len(row["runs"]) == 2 and 0 <= row["top1_error"] <= 1
        assert all(r["gap"] == pytest.approx(r["top1_error"] - r["train_error"]) for r in row["runs"])
        if row["variant"] != "full":
            assert len(row["top1_interval_images"]) == 2 and len(row["top1_interval_seeds"]) == 2
            assert 0 <= row["top1_p"] <= row["p_holm"] <= 1 and row["verdict"]
    assert len(results["table"]) == 3 and "Holm" in results["table"][1]["setting"]
    assert "Holm over 2 comparisons" in results["correction"]
    for k in keys:  # each run's record holds its per-image hits
        for seed in (0, 1):
            record = json.loads((records / f"{k}-seed{seed}.json").read_text())
            assert record["extras"]["val_hits"]["top1"]["n"] == 3 * 4 and record["seed"] == seed  # 3 of 4 classes
    ablations.plot(results, tmp_path / "ablations.png")
    assert Path(tmp_path / "ablations.png").stat().st_size > 10_000

    # the runs folder gone (another machine): the records answer, nothing is trained or evaluated again
    shutil.rmtree(tmp_path / "runs")
    again = Runner(tmp_path / "runs", records=records)
    assert ablations.run_experiment(again, 2, budget, overrides)["table"] == results["table"]
    assert again.trained_now == [] and len(again.from_records) == 6


@pytest.mark.slow
def test_experiment_command_runs_the_ablations_and_writes_one_table_row_per_variant(tmp_path, capsys):
    import json

    from alexnet.cli import main

    store = make_store(tmp_path, n_train=4, n_val=2, size=36)
    argv = ["experiment", "ablations", "--seeds", "1", "--budget", "smoke", "--data", str(store),
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "exp"), "--no-progress", "--json"]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in results["variants"]] == [v.key for v in ablations.VARIANTS]
    table = (tmp_path / "exp" / "README.md").read_text()
    assert table.count("| ablation: ") == len(ablations.VARIANTS)
    assert (tmp_path / "exp" / "results" / "ablations-smoke.json").is_file()
