"""`alexnet experiment`: the runner over fit (resumable, finished runs kept), the relu-vs-tanh experiment end to
end at a tiny budget, its measure (epochs to 25 %), its sweep, its network (cuda-convnet's layers-19pct.cfg),
the results file and the generated table. Nothing here asserts the scientific outcome."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet.cli import main as cli_main
from alexnet.experiments import relu_vs_tanh as rvt
from alexnet.experiments import run as run_experiment
from alexnet.experiments.runner import OUTCOME_FILE, Runner, RunOutcome, RunSpec, runs_per_machine
from alexnet.models import create_model
from helpers_train import alexnet_cmd, env_one_thread, make_store, tiny_config

SMOKE = ("data.batch_size=16", "data.eval_batch_size=16", "data.workers=0")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("exp"), n_train=8, n_val=4, size=32)


def _records(errors: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "train_error": e} for i, e in enumerate(errors)]


# --- the measure ---------------------------------------------------------------------------------------

def test_epochs_to_target_interpolates_between_epoch_ends():
    assert rvt.epochs_to_target(_records([0.5, 0.3, 0.2])) == pytest.approx(2.5)  # 0.3 -> 0.2 crosses halfway
    assert rvt.epochs_to_target(_records([0.5, 0.25])) == pytest.approx(2.0)
    assert rvt.epochs_to_target(_records([0.1])) == pytest.approx((0.9 - 0.25) / (0.9 - 0.1))  # from chance
    assert rvt.epochs_to_target(_records([0.5, 0.4, 0.3])) is None


def test_stop_rule_extra_epochs_after_reaching_and_the_sweep_bound():
    done = rvt.done_rule(extra=2, bound=None)
    assert not done(_records([0.5, 0.2])) and not done(_records([0.5, 0.2, 0.1]))
    assert done(_records([0.5, 0.2, 0.1, 0.1]))  # reached in epoch 2, then 2 more
    bounded = rvt.done_rule(extra=0, bound=3)
    assert not bounded(_records([0.5, 0.4])) and bounded(_records([0.5, 0.4, 0.3]))


def _outcome(act: str, seed: int, errors: list[float]) -> RunOutcome:
    return RunOutcome(f"{act}-{seed}", act, seed, "finished", _records(errors), 1.0, "", {"lr": 0.01})


def test_ratio_at_every_threshold_with_an_interval_and_lower_bounds():
    finals = {"relu": [_outcome("relu", 1, [0.5, 0.2]), _outcome("relu", 2, [0.5, 0.2])],
              "tanh": [_outcome("tanh", 1, [0.6, 0.5, 0.4, 0.2]), _outcome("tanh", 2, [0.6, 0.5, 0.45, 0.4])]}
    at50 = rvt.ratio_at(finals, 0.5)
    assert at50["values"] == [pytest.approx(2.0), pytest.approx(2.0)] and at50["interval"] == [2.0, 2.0]
    at25 = rvt.ratio_at(finals, 0.25)  # relu: 1 + 0.25 / 0.3 epochs; tanh seed 1: 3.75, seed 2 never
    assert at25["values"] == [pytest.approx(3.75 / (1 + 0.25 / 0.3))] and at25["interval"] is None
    assert at25["lower_bounds"] == [{"seed": 2, "at_least": pytest.approx(4 / (1 + 0.25 / 0.3))}]
    assert rvt.verdict({"interval": [4.0, 7.0]}) == "reproduced"
    assert rvt.verdict({"interval": [2.0, 4.0]}) == "direction only"
    assert rvt.verdict({"interval": [0.8, 4.0]}) == "not at this budget"
    assert rvt.verdict({"interval": None}).startswith("not testable")


class FakeRunner:
    """Outcomes from a table of lr -> training errors per epoch, cut where each spec's rule says."""

    def __init__(self, curves: dict[float, list[float]]):
        self.curves, self.runs = curves, []
        self.log = print

    def run(self, spec: RunSpec) -> RunOutcome:
        lr = spec.facts["lr"]
        metrics = []
        for m in _records(self.curves[lr])[: spec.config.run.epochs]:
            metrics.append(m)
            if spec.done(metrics):
                break
        self.runs.append((lr, len(metrics)))
        return RunOutcome(spec.key, spec.variant, spec.config.run.seed, "finished", metrics, 1.0, "", spec.facts)


def _budget(**changes) -> rvt.Budget:
    return rvt.Budget(**{**rvt.BUDGETS["smoke"].__dict__, "caps": {"relu": 10, "tanh": 10}, **changes})


def test_sweep_stops_losers_at_the_best_epochs_and_grows_the_grid_at_its_edge():
    slow, fast, faster = [0.8] * 10, [0.6, 0.4, 0.2, 0.1, 0.1, 0.1], [0.5, 0.2, 0.1, 0.1]
    runner = FakeRunner({0.002: fast, 0.001: slow, 0.004: faster, 0.008: slow})
    budget = _budget(rates=(0.002, 0.001, 0.004), max_rates=5, extra_epochs=1)
    lr, outcomes = rvt.sweep(runner, "relu", budget, ("data.store=x",))
    assert lr == 0.004
    # 0.002 reaches 25 % in epoch 3 and trains 1 more; 0.001 is cut at 3 epochs; 0.004 wins at the edge, so 0.008
    # is tried and cut at 2 (the new best, ceil(1.67)); 0.008 lost, so the grid stops growing (not at 0.016)
    assert runner.runs == [(0.002, 4), (0.001, 3), (0.004, 3), (0.008, 2)]
    assert [o.facts["lr"] for o in outcomes] == [0.002, 0.001, 0.004, 0.008]


def test_sweep_without_any_run_reaching_chooses_the_lowest_last_error():
    runner = FakeRunner({0.002: [0.8, 0.6], 0.001: [0.8, 0.7]})
    lr, _ = rvt.sweep(runner, "tanh", _budget(caps={"relu": 2, "tanh": 2}), ("data.store=x",))
    assert lr == 0.002 and runner.runs == [(0.002, 2), (0.001, 2)]


# --- the network of the experiment ------------------------------------------------------------------------

def test_fig1_net_follows_layers_19pct():
    torch.manual_seed(0)
    net = create_model("cifar_fig1_tanh", num_classes=10)
    assert isinstance(net.conv1[2], torch.nn.MaxPool2d) and isinstance(net.conv2[2], torch.nn.AvgPool2d)
    assert isinstance(net.conv3[2], torch.nn.AvgPool2d) and isinstance(net.conv1[1], torch.nn.Tanh)
    assert net.conv1[0].weight.std().item() == pytest.approx(1e-4, rel=0.05)  # initW per layer
    for layer in (net.conv2[0], net.conv3[0], net.fc4):
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert not layer.bias.any()
    # cuda-convnet's pooling: windows at 0, 2, ..., 30, the last one clipped to 2 columns, averaged over those
    x = torch.arange(32.0).repeat(1, 32, 1).reshape(1, 1, 32, 32)
    pooled = net.conv2[2](x)
    assert pooled.shape == (1, 1, 16, 16)
    assert pooled[0, 0, 0, 0].item() == pytest.approx(1.0) and pooled[0, 0, 0, -1].item() == pytest.approx(30.5)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_existing_cifar_nets_keep_their_layers():
    torch.manual_seed(0)
    net = create_model("cifar_relu", num_classes=10)
    pool = net.conv2[-1]
    assert isinstance(pool, torch.nn.MaxPool2d) and pool.padding == 1 and not pool.ceil_mode
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 32, 5, padding=2)  # PyTorch's default initialisation, drawn first
    torch.testing.assert_close(net.conv1[0].weight, ref.weight)


# --- the runner ---------------------------------------------------------------------------------------------

class Stop(Exception):
    pass


def _stop_after_first(outcome: RunOutcome) -> None:
    raise Stop(outcome.key)


def test_runner_records_a_diverged_run_and_does_not_retrain_it(tmp_path, store):
    spec = RunSpec("huge-lr", "relu", tiny_config(store, "optim.lr=1e12", "run.epochs=3", *SMOKE), None, {})
    runner = Runner(tmp_path, log=lambda line: None)
    outcome = runner.run(spec)
    assert outcome.status == "diverged" and outcome.epochs < 3
    again = Runner(tmp_path, log=lambda line: None)
    assert again.run(spec).status == "diverged" and again.trained_now == []


def test_runner_keeps_finished_runs_when_stopped_between_runs(tmp_path, store):
    specs = [RunSpec(f"run{i}", "relu", tiny_config(store, f"run.seed={i}", "run.epochs=1", *SMOKE)) for i in (0, 1)]
    first = Runner(tmp_path, log=lambda line: None, on_finished=_stop_after_first)
    with pytest.raises(Stop):
        for spec in specs:
            first.run(spec)
    stamp = (tmp_path / "run0" / OUTCOME_FILE).stat().st_mtime_ns
    second = Runner(tmp_path, log=lambda line: None)
    outcomes = [second.run(spec) for spec in specs]
    assert second.trained_now == ["run1"] and (tmp_path / "run0" / OUTCOME_FILE).stat().st_mtime_ns == stamp
    assert [o.epochs for o in outcomes] == [1, 1] and outcomes[0].wall_s > 0
    assert outcomes[0].metrics == [json.loads(line) for line in (tmp_path / "run0" / "metrics.jsonl").open()]


def test_a_longer_spec_continues_a_finished_run_and_a_shorter_one_gets_its_first_epochs(tmp_path, store):
    def spec(epochs: int) -> RunSpec:
        return RunSpec("run", "relu", tiny_config(store, f"run.epochs={epochs}", *SMOKE), rvt.done_rule(0, None))

    short = Runner(tmp_path, log=lambda line: None).run(spec(1))
    longer = Runner(tmp_path, log=lambda line: None)
    extended = longer.run(spec(2))
    assert longer.trained_now == ["run"] and extended.epochs == 2 and extended.metrics[0] == short.metrics[0]
    again = Runner(tmp_path, log=lambda line: None)
    prefix = again.run(spec(1))
    assert again.trained_now == [] and prefix.metrics == short.metrics and 0 < prefix.wall_s < extended.wall_s


def test_metrics_file_one_epoch_behind_its_checkpoint_is_caught_up_not_retrained(tmp_path, store):
    # a kill between the checkpoint's save and the metrics file's write leaves the file an epoch behind
    spec = RunSpec("run", "relu", tiny_config(store, "run.epochs=1", *SMOKE), rvt.done_rule(0, None))
    trained = Runner(tmp_path, log=lambda line: None).run(spec)
    (tmp_path / "run" / OUTCOME_FILE).unlink()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    again = Runner(tmp_path, log=lambda line: None).run(spec)
    assert again.metrics == trained.metrics and again.wall_s == pytest.approx(trained.wall_s)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_finished_run_folder_is_attributed_to_the_machine_that_trained_it(tmp_path, store):
    """A runs folder shared between machines: the run's own environment.json names where it trained."""
    spec = RunSpec("run", "relu", tiny_config(store, "run.epochs=1", *SMOKE), None)
    Runner(tmp_path, log=lambda line: None).run(spec)
    env_path = tmp_path / "run" / "environment.json"
    env_path.write_text(json.dumps({**json.loads(env_path.read_text()), "cpu": "A shared CPU", "gpu": None}))
    reader = Runner(tmp_path, log=lambda line: None)
    reader.run(spec)
    assert reader.trained_now == [] and reader.machines == {"run": "A shared CPU"}
    env_path.unlink()  # a folder without one: the reading machine, as before
    from alexnet.info import cpu_model

    again = Runner(tmp_path, log=lambda line: None)
    again.run(spec)
    assert again.machines == {"run": cpu_model()}


def test_records_outlive_the_runs_folder_and_a_changed_config_trains_again(tmp_path, store):
    spec = RunSpec("run", "relu", tiny_config(store, "run.epochs=1", *SMOKE), None, {"lr": 0.01})
    records = tmp_path / "records"
    first = Runner(tmp_path / "runs", log=lambda line: None, records=records)
    outcome = first.run(spec)
    assert first.extra(outcome, "answer", lambda o: {"value": 42}) == {"value": 42}
    assert first.trained_now == ["run"] and (records / "run.json").is_file()
    from alexnet.info import cpu_model

    record = json.loads((records / "run.json").read_text())
    assert record["machine"] == record["cpu"] == cpu_model() and first.machines == {"run": cpu_model()}
    (records / "run.json").write_text(json.dumps({**record, "machine": "Another CPU"}))
    shutil.rmtree(tmp_path / "runs")  # another machine: only the committed records are there
    second = Runner(tmp_path / "runs", log=lambda line: None, records=records)
    again = second.run(spec)
    assert second.trained_now == [] and second.from_records == ["run"]
    assert second.machines == {"run": "Another CPU"}  # where the run trained, not where it was read
    assert runs_per_machine({"a": "X", "b": "Y", "c": "Y"}) == {"Y": 2, "X": 1}
    assert again.metrics == outcome.metrics and again.facts == {"lr": 0.01} and again.wall_s == outcome.wall_s
    assert second.extra(again, "answer", lambda o: 0) == {"value": 42}
    with pytest.raises(FileNotFoundError, match="delete .*run.json to train the run again"):
        second.extra(again, "other", lambda o: 0)  # nothing to compute it from
    changed = RunSpec("run", "relu", tiny_config(store, "run.epochs=1", "optim.lr=0.003", *SMOKE))
    third = Runner(tmp_path / "runs", log=lambda line: None, records=records)
    third.run(changed)
    assert third.trained_now == ["run"] and third.from_records == []
    assert json.loads((records / "run.json").read_text())["config"]["optim"]["lr"] == 0.003


def test_a_record_names_the_code_its_process_started_with(tmp_path, store, monkeypatch):
    """A commit made while a run trains changes the checkout, not the loaded code: the record keeps the
    version the Runner saw when it was created."""
    from alexnet.experiments import runner as runner_module

    started = {"alexnet": "0.1.0", "commit": "a" * 40, "dirty": False}
    monkeypatch.setattr(runner_module, "code_version", lambda: started)
    runner = Runner(tmp_path / "runs", log=lambda line: None, records=tmp_path / "records")
    monkeypatch.setattr(runner_module, "code_version", lambda: {**started, "commit": "b" * 40})
    runner.run(RunSpec("run", "relu", tiny_config(store, "run.epochs=1", *SMOKE)))
    assert json.loads((tmp_path / "records" / "run.json").read_text())["code_version"] == started


def test_a_record_compares_the_store_by_its_name_not_its_path():
    from alexnet.config import load_config
    from alexnet.experiments.records import comparable_config, pack_bits, unpack_bits

    here, there = (comparable_config(load_config("demo", [f"data.store={p}/stores/imagenette"]))
                   for p in ("/root/.cache/alexnet", "/home/someone/.cache/alexnet"))
    assert here == there and here["data"]["store"] == "imagenette"
    from alexnet.experiments.records import configs_match

    older = json.loads(json.dumps(here))
    del older["optim"]["bias_lr_scale"]  # a record written before the key existed ...
    assert configs_match(older, here)  # ... matches while the key is at its default
    assert not configs_match(older, {**here, "optim": {**here["optim"], "bias_lr_scale": 2.0}})
    assert not configs_match(here, older)  # a key the config no longer has: stale
    assert not configs_match(here, {**here, "run": {**here["run"], "epochs": 3}})
    bits = torch.rand(3925, generator=torch.Generator().manual_seed(0)).numpy() > 0.3
    packed = pack_bits(bits)
    assert (unpack_bits(packed) == bits).all() and len(packed["bits"]) < 700


# --- the experiment end to end ------------------------------------------------------------------------------

def _run(tmp_path: Path, store: Path, runner: Runner | None = None) -> dict:
    return run_experiment("relu-vs-tanh", seeds=2, budget="smoke", device="cpu", runs_dir=tmp_path / "runs",
                          out=tmp_path / "out", overrides=(f"data.store={store}", *SMOKE), runner=runner)


@pytest.mark.slow
def test_experiment_stopped_after_its_first_run_resumes_without_redoing_it(tmp_path, store):
    first = Runner(tmp_path / "runs", log=lambda line: None, on_finished=_stop_after_first)
    with pytest.raises(Stop) as stopped:
        _run(tmp_path, store, first)
    key = str(stopped.value)
    marker = tmp_path / "runs" / key / OUTCOME_FILE
    stamp = marker.stat().st_mtime_ns
    second = Runner(tmp_path / "runs", log=lambda line: None)
    results = _run(tmp_path, store, second)
    assert key not in second.trained_now and marker.stat().st_mtime_ns == stamp
    assert results["trained_in_this_call"] == second.trained_now

    # every (activation, lr, seed) in its own folder: the sweep's 2 rates at seed 0, then seeds 1 and 2 at the
    # chosen rate (the sweep's seed is not reused)
    keys = {r["key"] for r in results["runs"]} | {r["key"] for s in results["sweep"].values() for r in s["runs"]}
    assert len(keys) == results["runs_trained"] == 8 and key in keys
    assert {p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()} == keys  # beside them, their locks

    for name in ("experiment", "claim", "paper", "budget", "seeds", "config", "sweep", "runs", "epochs_to_25",
                 "ratio", "wall_time_s", "command", "code_version", "hardware", "table", "plot"):
        assert name in results, name
    assert results["hardware"]["cpu"] and results["hardware"]["cores"] >= 1
    assert results["budget"]["name"] == "smoke" and results["budget"]["reduced"] is True
    assert results["seeds"] == [1, 2] and results["sweep_seed"] == 0 and len(results["runs"]) == 4
    assert set(results["ratio_by_threshold"]) == {f"{t:.2f}" for t in rvt.THRESHOLDS}
    assert results["ratio"] == results["ratio_by_threshold"]["0.25"]
    for act in ("relu", "tanh"):
        runs = [r for r in results["runs"] if r["activation"] == act]
        assert [r["seed"] for r in runs] == [1, 2] and len({r["lr"] for r in runs}) == 1
        stats = results["epochs_to_25"][act]
        values = [r["epochs_to_25"] for r in runs if r["epochs_to_25"] is not None]
        assert stats["values"] == values and stats["n"] == len(values)
        assert len(stats["not_reached"]) == 2 - len(values)
        if values:
            assert stats["mean"] == pytest.approx(statistics.fmean(values))
        if len(values) > 1:
            assert stats["std"] == pytest.approx(statistics.stdev(values))
        for r in runs:
            metrics = [json.loads(line) for line in (tmp_path / "runs" / r["key"] / "metrics.jsonl").open()]
            assert r["train_error"] == [m["train_error"] for m in metrics]
    assert results["wall_time_s"] == pytest.approx(sum(
        json.loads((tmp_path / "runs" / k / OUTCOME_FILE).read_text())["wall_s"] for k in keys))

    saved = json.loads((tmp_path / "out" / "results" / "relu-vs-tanh-smoke.json").read_text())
    assert saved["ratio"] == results["ratio"] and saved["command"].startswith("alexnet experiment relu-vs-tanh")
    assert (tmp_path / "out" / "results" / "relu-vs-tanh-smoke.png").stat().st_size > 10_000
    table = (tmp_path / "out" / "README.md").read_text()
    assert "| claim | paper |" in table and "reduced" in table and saved["command"] in table


def _results(claim: str, plot: str | None = "x.png") -> dict:
    return {
        "claim": claim, "command": "alexnet experiment x --seeds 3", "wall_time_s": 90.0, "plot": plot,
        "hardware": {"cpu": "AMD EPYC", "cores": 2, "device": "cpu", "gpu": None, "torch": "2.14.1"},
        "table": {"claim": claim, "paper": "6x", "ours": "2.0 ± 0.1x | n = 3", "setting": "budget cpu (reduced)"},
    }


def test_table_is_generated_from_every_results_file(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    for name in ("b", "a"):
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(_results(f"claim {name}")))
    assert cli_main(["experiment", "table", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "README.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith(("| claim a", "| claim b"))]
    assert rows[0].startswith("| claim a ([plot](results/x.png)) | 6x | 2.0 ± 0.1x \\| n = 3 |")  # | escaped
    assert "claim b" in rows[1]
    settings = [line for line in lines if line.startswith("| [")]  # one per results file, in file order
    assert settings[0].startswith("| [a](results/a.json) | AMD EPYC, 2 cores (cpu, torch 2.14.1) |")
    assert "budget cpu (reduced) | 1.5 min | `alexnet experiment x --seeds 3` |" in settings[0]
    assert str(tmp_path / "README.md") in capsys.readouterr().out


def test_unknown_experiment_and_budget_are_one_line_errors(capsys):
    assert cli_main(["experiment", "nope"]) == 1
    assert "unknown experiment 'nope'; experiments: relu-vs-tanh" in capsys.readouterr().err
    assert cli_main(["experiment", "relu-vs-tanh", "--budget", "huge"]) == 1
    assert "unknown budget 'huge' for relu-vs-tanh; budgets: cpu, paper, smoke" in capsys.readouterr().err


@pytest.mark.slow
def test_experiment_killed_with_sigkill_continues_where_it_stopped(tmp_path, store):
    cmd = alexnet_cmd("experiment", "relu-vs-tanh", "--seeds", "2", "--budget", "smoke", "--device", "cpu",
                      "--data", str(store), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                      "--no-progress", *(a for s in SMOKE for a in ("--set", s)))
    env = {**env_one_thread(), "ALEXNET_LRN": "torch"}  # these nets have no LRN: no kernel build to wait for
    log = (tmp_path / "first.log").open("w")  # a file, not a pipe nobody reads, which could fill and block it
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    markers = []
    while time.monotonic() < deadline and proc.poll() is None:
        markers = sorted((tmp_path / "runs").glob(f"*/{OUTCOME_FILE}"))
        if markers and any(not (d / OUTCOME_FILE).exists() and (d / "checkpoints" / "latest.pt").exists()
                           for d in (tmp_path / "runs").iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the experiment ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {m.parent.name: m.stat().st_mtime_ns for m in markers}
    log.close()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming from" in out.stderr  # the killed run continued from its checkpoint (the log is on stderr)
    for key, stamp in finished.items():
        assert (tmp_path / "runs" / key / OUTCOME_FILE).stat().st_mtime_ns == stamp, key
    results = json.loads((tmp_path / "out" / "results" / "relu-vs-tanh-smoke.json").read_text())
    assert not set(finished) & set(results["trained_in_this_call"]) and len(results["runs"]) == 4


def _lock_held(path: Path) -> bool:
    import fcntl

    if not path.is_file():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


@pytest.mark.skipif(os.name != "posix", reason="the run lock is fcntl's")
def test_a_second_process_waits_for_the_run_another_is_training_and_does_not_train_it(tmp_path, store):
    # two experiment processes on one runs folder (two seeds' worth of work in parallel) must never train
    # the same run folder at once: the second waits for the first and then returns its stored outcome
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from alexnet.experiments.runner import Runner, RunSpec
from helpers_train import tiny_config
spec = RunSpec("run", "relu", tiny_config(Path({str(store)!r}), "run.epochs=12", *{SMOKE!r}))
Runner({str(tmp_path)!r}, log=lambda line: None).run(spec)
"""
    other = subprocess.Popen([sys.executable, "-c", script], env=env_one_thread())
    lock = tmp_path / ".run.lock"
    deadline = time.monotonic() + 120
    while not _lock_held(lock):
        assert other.poll() is None, "the other process ended before it took the lock"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    lines: list[str] = []
    runner = Runner(tmp_path, log=lines.append)
    spec = RunSpec("run", "relu", tiny_config(store, "run.epochs=12", *SMOKE))
    outcome = runner.run(spec)
    assert other.wait(timeout=120) == 0
    assert any("another process is training it" in line for line in lines)
    assert runner.trained_now == [] and outcome.epochs == 12 and outcome.status == "finished"
