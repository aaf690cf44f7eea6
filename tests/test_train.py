"""fit(): the run folder, exact resume, signals, fine-tuning, on a tiny store and the CIFAR-sized net."""

import json
import signal
import subprocess
import tomllib

import pytest
import tomli_w
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet.checkpoint import FORMAT, FORMAT_V1, load_checkpoint, save_checkpoint
from alexnet.config import load_config
from alexnet.models import create_model
from alexnet.models.build import load_pretrained
from alexnet.train import fit
from helpers_train import (
    alexnet_cmd,
    env_one_thread,
    make_store,
    tiny_config,
    wait_for_step,
    write_config,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    """An uninterrupted 3-epoch run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    summary = fit(tiny_config(store), run, progress=False)
    return run, summary


def test_run_folder_holds_config_metrics_plot_events_and_checkpoints(reference):
    run, summary = reference
    assert summary["status"] == "finished" and summary["epoch"] == 3 and summary["step"] == 3 * 16
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    for key in (
        "train_loss",
        "train_error",
        "val_top1_error",
        "val_top5_error",
        "lr",
        "images_per_s",
        "wall_time_s",
    ):
        assert all(isinstance(m[key], float) for m in lines), key
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]  # it learns
    assert lines[0]["lr"] == pytest.approx(0.01) and lines[2]["lr"] == pytest.approx(0.001)  # milestone 2
    assert all(m["val_images"] == 4 * 8 for m in lines)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("val_top1_error")]
    assert logged == [(m["epoch"], pytest.approx(m["val_top1_error"])) for m in lines]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([m["lr"] for m in lines])
    assert "[optim]" in (run / "config.toml").read_text()
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["allocator"] and env["lrn_cpu"] in ("cpp", "torch")
    latest = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert (latest["epoch"], latest["batch"], latest["step"]) == (3, 0, 48)
    assert latest["class_names"][0] == "tench" and len(latest["rng"]) == 1
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"] == min(m["val_top1_error"] for m in lines) and "optimizer" not in best


def test_a_second_run_in_the_same_folder_needs_resume(reference, store):
    run, _ = reference
    with pytest.raises(FileExistsError, match="pass --resume"):
        fit(tiny_config(store), run, progress=False)


@pytest.mark.parametrize("schedule", ["step", "linear"])
def test_budget_stop_then_resume_equals_the_uninterrupted_run(reference, store, tmp_path, schedule):
    """Stopped mid-epoch by a step budget, then resumed: same weights and losses, bit for bit. The budget
    only stops the run: the linear schedule still decays over all the epochs."""
    kind = (f"schedule.kind={schedule}",)
    ref_run = reference[0]
    if schedule != "step":  # the module's reference run uses the step schedule
        ref_run = tmp_path / "reference"
        fit(tiny_config(store, *kind), ref_run, progress=False)
    run = tmp_path / "run"
    first = fit(tiny_config(store, *kind, "run.budget_steps=21"), run, progress=False)
    assert first["status"] == "budget" and first["step"] == 21 and first["last"]["partial"]
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert (state["epoch"], state["batch"]) == (1, 5)
    second = fit(tiny_config(store, *kind), run, resume=True, progress=False)
    assert second["status"] == "finished" and second["step"] == 48
    ref = load_checkpoint(ref_run / "checkpoints" / "latest.pt")
    got = load_checkpoint(run / "checkpoints" / "latest.pt")
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    losses = [[m["train_loss"] for m in s["metrics"]] for s in (ref, got)]
    assert losses[0] == losses[1]


def test_until_epoch_pauses_and_the_resumed_run_is_the_uninterrupted_one(store, tmp_path):
    """fit(..., until_epoch=k) returns after k epochs; resumed, the run ends as one call would have it,
    the linear schedule decaying over all of run.epochs (what the experiments' runner relies on)."""
    kind = ("schedule.kind=linear",)
    whole = fit(tiny_config(store, *kind), tmp_path / "whole", progress=False)
    run = tmp_path / "run"
    paused = fit(tiny_config(store, *kind), run, progress=False, until_epoch=1)
    assert paused["status"] == "paused" and paused["step"] == 16 and paused["last"]["epoch"] == 1
    assert paused["last"]["val_top1_error"] is not None  # a call ends validated, like a run
    fit(tiny_config(store, *kind), run, resume=True, progress=False, until_epoch=2)
    final = fit(tiny_config(store, *kind), run, resume=True, progress=False)
    assert final["status"] == "finished" and final["step"] == whole["step"] == 48
    ref = load_checkpoint(tmp_path / "whole" / "checkpoints" / "latest.pt")
    got = load_checkpoint(run / "checkpoints" / "latest.pt")
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    assert [m["lr"] for m in ref["metrics"]] == [m["lr"] for m in got["metrics"]]


def test_a_split_in_memory_trains_as_one_streamed_from_disk(store, tmp_path):
    """In memory on the CPU the crop gathers each batch from the split itself (Augmenter.train's index);
    streamed, the loader copies the batch out first: the same batches, so the same run to the last bit."""
    runs = {}
    for in_memory in ("true", "false"):
        config = tiny_config(store, f"data.in_memory={in_memory}", "run.epochs=1", "data.lighting_std=0.1")
        fit(config, tmp_path / in_memory, progress=False)
        runs[in_memory] = load_checkpoint(tmp_path / in_memory / "checkpoints" / "latest.pt")
    for k, v in runs["true"]["model"].items():
        assert torch.equal(v, runs["false"]["model"][k]), k


def test_a_format_1_run_resumes_as_it_was_trained(store, tmp_path):
    """A run folder written by checkpoint format 1 (its checkpoint and config.toml without the keys format 2
    added) resumes with inverted dropout and decayed biases, as it was trained: it ends as the run that had
    them all along. With today's defaults in their place (the paper's dropout) it would train differently."""
    old = ("model.dropout_form=inverted", "optim.decay_biases=true")
    whole = fit(tiny_config(store, *old), tmp_path / "whole", progress=False)
    run = tmp_path / "run"
    fit(tiny_config(store, *old), run, progress=False, until_epoch=1)
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    for section, keys in (("model", ("dropout_form", "lrn_alpha")), ("optim", ("decay_biases", "bias_lr_scale"))):
        for key in keys:
            del state["config"][section][key]
    save_checkpoint({**state, "format": FORMAT_V1}, run / "checkpoints" / "latest.pt")
    saved = tomllib.loads((run / "config.toml").read_text())
    del saved["model"]["dropout_form"], saved["optim"]["decay_biases"]
    (run / "config.toml").write_text(tomli_w.dumps(saved))
    final = fit(load_config(run / "config.toml"), run, resume=True, progress=False)
    assert final["step"] == whole["step"]
    ref = load_checkpoint(tmp_path / "whole" / "checkpoints" / "latest.pt")
    got = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert got["format"] == FORMAT and got["config"]["model"]["dropout_form"] == "inverted"
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k


@pytest.mark.parametrize(
    "key, old, new",
    [
        ("data.batch_size", "8", "4"),
        ("run.seed", "0", "1"),
        ("data.batch_is_global", "true", "false"),
        ("data.input_scale", "64.0", "32.0"),
        ("model.dropout", "0.5", "0.0"),
        ("data.flip", "true", "false"),
    ],
)
def test_resume_refuses_a_config_that_changes_the_batches(store, tmp_path, key, old, new):
    run = tmp_path / "run"
    fit(tiny_config(store, "run.budget_steps=2"), run, progress=False)
    shown = {"true": "True", "false": "False"}
    with pytest.raises(
        ValueError,
        match=rf"{key} = {shown.get(new, new)} \(was {shown.get(old, old)}\); resume with .*config\.toml",
    ):
        fit(tiny_config(store, f"{key}={new}"), run, resume=True, progress=False)


def test_resume_may_change_epochs_and_budgets(store, tmp_path):
    run = tmp_path / "run"
    fit(tiny_config(store, "run.budget_steps=2"), run, progress=False)
    config = tiny_config(store, "run.epochs=1", "run.budget_minutes=60.0")
    summary = fit(config, run, resume=True, progress=False)
    assert summary["status"] == "finished" and summary["step"] == 16


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_catches_the_first_signal_and_lets_a_second_through(signum):
    from alexnet.signals import StopSignal

    seen = []

    def outer(s, frame):
        seen.append(s)

    before = signal.signal(signum, outer)
    try:
        stopper = StopSignal()
        with stopper.installed():
            signal.raise_signal(signum)
            assert stopper.signum == signum and seen == []
            signal.raise_signal(signum)  # the handler in place before the run's
            assert seen == [signum]
        assert signal.getsignal(signum) is outer
    finally:
        signal.signal(signum, before)


def test_demo_stops_after_an_interrupted_fit(tmp_path, monkeypatch, capsys):
    """An interrupt before the first epoch ends: no traceback, no ten-crop evaluation, 128 + signal."""
    import alexnet.demo
    from alexnet.demo import run_demo

    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "stores" / "imagenette").mkdir(parents=True)
    (tmp_path / "cache" / "stores" / "imagenette" / "meta.json").write_text("{}")
    run = tmp_path / "run"
    summary = {
        "status": "interrupted",
        "signal": int(signal.SIGINT),
        "step": 3,
        "last": None,
        "run_dir": str(run),
        "latest": str(run / "checkpoints" / "latest.pt"),
    }
    monkeypatch.setattr(alexnet.demo, "fit", lambda config, run_dir: summary)

    def no_eval(*args, **kwargs):
        raise AssertionError("the ten crops were evaluated after an interrupt")

    monkeypatch.setattr(alexnet.demo, "evaluate_checkpoints", no_eval)
    assert run_demo(str(run)) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "interrupted by signal 2" in err and f"alexnet train --resume --run-dir {run}" in err


@pytest.mark.slow
def test_sigterm_saves_a_loadable_checkpoint_and_exits_cleanly(store, tmp_path):
    """Checkpoints come only at the ends of epochs here, so one mid-epoch can only be SIGTERM's."""
    config = write_config(tiny_config(store, "run.epochs=50", "data.batch_size=2"), tmp_path / "c.toml")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        alexnet_cmd("train", "--config", str(config), "--run-dir", str(run), "--no-progress"),
        env=env_one_thread(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(proc, run / "checkpoints" / "latest.pt", 64)  # the end of epoch 1 (64 steps)
    # Whenever it lands from here on, the signal is seen after a training step of epoch 2 (the loop polls for
    # it after each step, and epoch 1's checkpoint is its last write), so the signal path saves mid-epoch.
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by signal 15" in err and "Traceback" not in err
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["batch"] > 0 and state["step"] % 64 != 0  # mid-epoch: written by the signal path


def test_load_pretrained_keeps_everything_but_the_classifier(reference, store):
    source = load_checkpoint(reference[0] / "checkpoints" / "latest.pt")["model"]
    model = create_model("cifar_relu", num_classes=3)
    fresh_head = model.fc4.weight.detach().clone()
    left = load_pretrained(model, reference[0] / "checkpoints" / "latest.pt")
    assert left == ["fc4.bias", "fc4.weight"]
    assert torch.equal(model.conv1[0].weight, source["conv1.0.weight"])
    assert torch.equal(model.fc4.weight, fresh_head)


def test_finetune_on_another_label_set(reference, tmp_path):
    from alexnet.train import finetune

    other = make_store(tmp_path, n_train=16, n_val=4, classes=("n03394916", "n03417042", "n03425413"))
    config = tiny_config(other, "run.epochs=1")
    summary = finetune(config, tmp_path / "ft", reference[0] / "checkpoints" / "best.pt", progress=False)
    state = load_checkpoint(tmp_path / "ft" / "checkpoints" / "latest.pt")
    assert summary["status"] == "finished" and state["model"]["fc4.weight"].shape[0] == 3
    assert state["class_names"] == ["French horn", "garbage truck", "gas pump"]


@pytest.mark.slow
def test_model_parallel_run_matches_the_single_device_run_and_checkpoints_its_layout(tmp_path):
    """`--model-parallel 2` on two CPU "devices": the losses of one device; checkpoints in its layout."""
    big = make_store(tmp_path, n_train=2, n_val=1, size=228)
    common = (
        "model.name=alexnet_nolrn",
        "model.input_size=224",
        "data.crop=224",
        "data.batch_size=4",
        "model.init=kaiming",
        "run.epochs=2",
        "model.dropout=0.0",
    )  # two half masks vs one mask
    runs = {}
    for mp in (1, 2):
        fit(tiny_config(big, *common, f"run.model_parallel={mp}"), tmp_path / f"mp{mp}", progress=False)
        runs[mp] = load_checkpoint(tmp_path / f"mp{mp}" / "checkpoints" / "latest.pt")
    single = create_model("alexnet_nolrn", num_classes=4).state_dict()
    assert {k: v.shape for k, v in runs[2]["model"].items()} == {k: v.shape for k, v in single.items()}
    losses = [[m["train_loss"] for m in runs[mp]["metrics"]] for mp in (1, 2)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for k, v in runs[1]["model"].items():
        torch.testing.assert_close(runs[2]["model"][k], v, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_demo_without_imagenette_explains_how_to_get_it_and_exits_2(tmp_path):
    env = {**env_one_thread(), "ALEXNET_DATA": str(tmp_path), "ALEXNET_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(alexnet_cmd("demo"), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        "needs Imagenette" in out.stderr
        and "imagenette2-224.tgz" in out.stderr
        and str(tmp_path) in out.stderr
    )


def test_the_schedule_is_fed_the_validation_error_not_the_training_error():
    from types import SimpleNamespace

    from alexnet.engine import Counts, EpochStats
    from alexnet.train import Position, end_epoch

    seen = []

    class Spy:
        def epoch_end(self, epoch, val_error):
            seen.append((epoch, val_error))

        def lr(self, step):
            return 0.01

    run = SimpleNamespace(schedule=Spy(), steps_per_epoch=4, process=SimpleNamespace(world_size=1))
    pos = Position(batch=4, step=4, stats=EpochStats(loss_sum=4.0, errors=4, images=4, steps=4, seconds=1.0))
    counts = Counts(total=torch.tensor([2, 2]), top1=torch.tensor([1, 0]), top5=torch.tensor([2, 2]))
    record, is_best = end_epoch(run, pos, counts, wall=1.0, cut_short=False)
    assert record["train_error"] == 1.0 and record["val_top1_error"] == 0.75
    assert seen == [(0, 0.75)] and is_best and (pos.epoch, pos.batch) == (1, 0)
    end_epoch(run, Position(batch=2, step=2), counts, wall=1.0, cut_short=True)
    assert seen == [(0, 0.75)]  # an epoch a budget cut short does not step the schedule


def test_validation_every_n_epochs_and_always_at_the_end(store, tmp_path):
    summary = fit(tiny_config(store, "run.epochs=3", "run.eval_every_epochs=2"), tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validated = [m["val_top1_error"] is not None for m in lines]
    assert validated == [False, True, True]  # epoch 2 (every 2) and epoch 3 (the end)
    assert summary["best_top1_error"] == min(m["val_top1_error"] for m in lines if m["val_top1_error"] is not None)
    with pytest.raises(ValueError, match="plateau.*needs the validation error of every epoch"):
        tiny_config(store, "schedule.kind=plateau", "run.eval_every_epochs=0")
