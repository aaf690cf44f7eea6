"""Faults inflicted for real on training (issue: never lose work, never trust input).

kill -9 at random points then --resume; kill -9 inside a checkpoint write; a full disk (RLIMIT_FSIZE in a
child process); truncated, bit-flipped and code-carrying checkpoints; bad configs and command lines; a
non-finite loss; a torchrun worker killed under --max-restarts 1.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.errors import CheckpointError, NonFiniteLossError
from alexnet.train import fit
from helpers_train import alexnet_cmd, env_one_thread, make_store, tiny_config, wait_for_step, write_config

EVERY_STEP = ("run.checkpoint_every_steps=1",)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("faults"))


def _train(config_path: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        alexnet_cmd("train", "--config", str(config_path), "--run-dir", str(run), "--no-progress", *extra),
        env=env_one_thread(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    config = write_config(tiny_config(store, *EVERY_STEP), tmp / "config.toml")
    _finish(_train(config, tmp / "run"))
    return config, tmp / "run" / "checkpoints" / "latest.pt"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_a_random_point_then_resume_gives_identical_weights(uninterrupted, tmp_path, seed):
    config, reference = uninterrupted
    rng = random.Random(seed)
    run = tmp_path / "run"
    proc = _train(config, run)
    seen = wait_for_step(proc, run / "checkpoints" / "latest.pt", rng.randrange(2, 40))
    time.sleep(rng.uniform(0, 0.05))  # land anywhere: in a step, an evaluation or a checkpoint write
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and 0 < seen < 48  # really killed mid-run
    _finish(_train(config, run, "--resume"))
    _same_weights(reference, run / "checkpoints" / "latest.pt")
    assert not list((run / "checkpoints").glob(".*tmp*"))  # a half-written temporary file is cleaned up


_WRITER = """
import sys, torch
from alexnet.checkpoint import save_checkpoint
path = sys.argv[1]
save_checkpoint({"generation": 0, "w": torch.zeros(10)}, path)
print("ready", flush=True)
generation = 1
while True:
    save_checkpoint({"generation": generation, "w": torch.randn(40_000_000)}, path)
    generation += 1
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "latest.pt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except FileNotFoundError:  # a temporary file renamed away meanwhile
            return 0

    def half_written() -> bool:  # some file in the folder is between 1 MB and the full 160 MB
        return any(1_000_000 < size(p) < 150_000_000 for p in tmp_path.iterdir())

    while not half_written():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.002)
    proc.kill()  # mid-write
    proc.wait()
    state = load_checkpoint(path)
    assert state["generation"] >= 0 and state["w"].numel() in (10, 40_000_000)
    assert state["generation"] == 0 or state["w"].numel() == 40_000_000


_DISK_FULL = """
import resource, signal, sys, torch
from alexnet.checkpoint import save_checkpoint
from alexnet.errors import CheckpointError
path = sys.argv[1]
save_checkpoint({"generation": 0, "w": torch.zeros(10)}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
try:
    save_checkpoint({"generation": 1, "w": torch.zeros(1_000_000)}, path)
except CheckpointError as e:
    print(e)
"""


def test_disk_full_during_a_checkpoint_write_is_a_clear_error_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / "latest.pt"
    out = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"could not write checkpoint {path}: File too large" in out.stdout
    assert "previous checkpoint there is intact" in out.stdout
    assert load_checkpoint(path)["generation"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


@pytest.fixture
def good_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint({"model": {"w": torch.randn(256, 256)}, "step": 3}, path)
    return path


def test_truncated_checkpoint_is_a_clear_error_naming_the_file(good_checkpoint):
    data = good_checkpoint.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        good_checkpoint.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"checkpoint {good_checkpoint} is truncated or corrupt"):
            load_checkpoint(good_checkpoint)


def test_bit_flipped_checkpoint_is_a_clear_error_naming_the_file(good_checkpoint):
    data = bytearray(good_checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit inside the tensor's bytes: torch.load alone would not notice
    good_checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checkpoint {good_checkpoint} is corrupt: .* CRC-32"):
        load_checkpoint(good_checkpoint)


class _Payload:
    """Pickles as a call to os.system: loading it with plain pickle would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, store):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt holds objects other than tensors.*refused.*system"):
        load_checkpoint(evil)
    out = subprocess.run(
        alexnet_cmd("evaluate", str(evil), "--data", str(store)), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "refused" in out.stderr and "Traceback" not in out.stderr
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    evil.rename(run / "checkpoints" / "latest.pt")
    with pytest.raises(CheckpointError, match="refused"):
        fit(tiny_config(store), run, resume=True, progress=False)
    assert not marker.exists()
    import pickle

    pickle.loads(pickle.dumps(_Payload(marker)))  # the control: unpickled without the guard, it does run
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--set", "optim.lrate=0.1"],
            r"unknown key optim\.lrate; valid keys: kind, lr, momentum, weight_decay",
        ),
        (["--set", "run.epochs=many"], r"'many' is not a valid value for run\.epochs"),
        (["--set", "run.epochs=2.5"], r"run\.epochs = 2\.5 has the wrong type: expected int"),
    ],
)
def test_bad_config_values_list_what_is_valid(args, expected, tmp_path):
    out = subprocess.run(
        alexnet_cmd("train", "--run-dir", str(tmp_path / "r"), *args),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert re.search(expected, out.stderr), out.stderr


@pytest.mark.slow
def test_config_file_with_unknown_key_lists_valid_keys(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nepoch = 3\n")
    out = subprocess.run(
        alexnet_cmd("train", "--config", str(bad)), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "unknown key run.epoch; valid keys in [run]: epochs, budget_steps" in out.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "3"],
        ["frobnicate"],
        ["evaluate"],
        ["train", "--model-parallel", "3"],
        ["export", "x.pt", "--format", "zip"],
    ],
)
def test_nonsense_command_lines_print_usage_and_exit_2(argv):
    out = subprocess.run(alexnet_cmd(*argv), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "usage: alexnet" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("every", [1, 10])
def test_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    store, tmp_path, monkeypatch, every
):
    """The loop reads the loss back only now and then (engine.SYNC_EVERY), but always before a checkpoint:
    saving every step, the last checkpoint is step 6's; saving every 10 steps, the NaN of step 7 is found
    when step 10's checkpoint is due, and none is written."""
    import alexnet.models.build

    create = alexnet.models.build.create_model
    calls = {"n": 0}

    class Poisoned(torch.nn.Module):
        """The tiny net, whose output turns to NaN on its 7th training forward pass."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net(x)
            if self.training:
                calls["n"] += 1
                if calls["n"] == 7:
                    out = out * float("nan")
            return out

    monkeypatch.setattr(alexnet.models.build, "create_model", lambda *a, **k: Poisoned(create(*a, **k)))
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 6 \(epoch 1, batch 6\)"):
        fit(tiny_config(store, *EVERY_STEP, f"run.checkpoint_every_steps={every}"), run, progress=False)
    if every == 10:
        assert not (run / "checkpoints" / "latest.pt").exists()
        return
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 6  # the last good step's checkpoint, not overwritten
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _workers(pid: int) -> list[int]:
    def cmdline(p: int) -> str:
        try:
            return Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    return [p for p in _descendants(pid) if "-m alexnet train" in cmdline(p)]


@pytest.mark.slow
def test_torchrun_worker_killed_restarts_from_its_checkpoint_and_ends_like_an_undisturbed_run(
    store, tmp_path
):
    from test_distributed import torchrun_cmd

    # dropout and random crops on: each restarted process must get its own random state back
    config = write_config(
        tiny_config(store, "run.epochs=2", "run.checkpoint_every_steps=4"), tmp_path / "c.toml"
    )

    def launch(run: Path) -> subprocess.Popen:
        return subprocess.Popen(
            torchrun_cmd(
                2,
                "train",
                "--config",
                str(config),
                "--run-dir",
                str(run),
                "--no-progress",
                "--resume",
                max_restarts=1,
            ),
            env=env_one_thread(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    _finish(launch(tmp_path / "undisturbed"))
    job = launch(tmp_path / "disturbed")
    seen = wait_for_step(job, tmp_path / "disturbed" / "checkpoints" / "latest.pt", 8)
    workers = _workers(job.pid)
    assert len(workers) == 2 and 0 < seen < 32, (workers, seen)
    os.kill(workers[-1], signal.SIGKILL)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    assert "failed (exitcode: -9)" in err  # torchrun saw the worker die ...
    assert "resuming from" in err and "step 0" not in err  # ... and restarted both from the checkpoint (the log)
    _same_weights(
        tmp_path / "undisturbed" / "checkpoints" / "latest.pt",
        tmp_path / "disturbed" / "checkpoints" / "latest.pt",
    )
