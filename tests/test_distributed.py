"""torchrun with gloo: two processes and one process with the same global batch train the same network."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from helpers_train import alexnet_cmd, env_one_thread, make_store, tiny_config, write_config

# Random crops, flips and dropout draw from per-process generators, so they are off: what is compared is the
# data-parallel arithmetic (sharded batches, averaged gradients, summed evaluation counts).
DETERMINISTIC = (
    "data.random_crop=false",
    "data.flip=false",
    "model.dropout=0.0",
    "run.epochs=2",
    "run.checkpoint_every_steps=4",
)


def torchrun_cmd(nproc: int, *args: str, max_restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "alexnet",
        *args,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    store = make_store(tmp)
    config = write_config(tiny_config(store, *DETERMINISTIC), tmp / "config.toml")
    args = ("train", "--config", str(config), "--no-progress", "--run-dir")
    single = subprocess.run(
        alexnet_cmd(*args, str(tmp / "one")),
        env=env_one_thread(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        torchrun_cmd(2, *args, str(tmp / "two")),
        env=env_one_thread(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr
    return tmp, config


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_give_the_same_losses_as_one(runs):
    tmp, _ = runs
    one, two = _metrics(tmp / "one"), _metrics(tmp / "two")
    assert [m["world_size"] for m in two] == [2, 2]
    for a, b in zip(one, two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_error"] == a["train_error"]
        assert b["val_images"] == a["val_images"] == 32  # every validation image counted exactly once
        assert b["val_top1_error"] == a["val_top1_error"] and b["val_top5_error"] == a["val_top5_error"]
    w1 = load_checkpoint(tmp / "one" / "checkpoints" / "latest.pt")
    w2 = load_checkpoint(tmp / "two" / "checkpoints" / "latest.pt")
    assert len(w2["rng"]) == 2 and w2["step"] == w1["step"] == 2 * 16
    for k, v in w1["model"].items():
        assert torch.allclose(v, w2["model"][k], rtol=1e-4, atol=1e-6), k


@pytest.mark.slow
def test_evaluation_under_torchrun_is_exact(runs):
    tmp, _ = runs
    ckpt = str(tmp / "one" / "checkpoints" / "latest.pt")
    store = str(tmp / "store")
    cmd = ("evaluate", ckpt, "--data", store, "--json", "--batch-size", "5", "--ten-crop")
    one = subprocess.run(alexnet_cmd(*cmd), env=env_one_thread(), capture_output=True, text=True, timeout=300)
    two = subprocess.run(
        torchrun_cmd(2, *cmd), env=env_one_thread(), capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)  # only rank 0 prints
    assert r1["images"] == r2["images"] == 32
    assert (r1["top1_error"], r1["top5_error"], r1["per_class"]) == (
        r2["top1_error"],
        r2["top5_error"],
        r2["per_class"],
    )


def _grads(module):
    return {k: p.grad for k, p in module.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet_nolrn", "alexnet"])
def test_two_towers_on_two_devices_equal_the_single_device_network(name):
    """Section 3.2 / Figure 2: the same outputs and gradients, each device holding half of every layer."""
    import copy

    from alexnet.model_parallel import TowerParallel
    from alexnet.models import create_model

    torch.manual_seed(0)
    single = create_model(name, num_classes=10, dropout=0.0, init="kaiming")
    towers = TowerParallel(copy.deepcopy(single), (torch.device("cpu"), torch.device("cpu")))
    shapes = {k: tuple(v.shape) for k, v in towers.towers[1].state_dict().items()}
    assert shapes["conv1.weight"] == (48, 3, 11, 11) and shapes["conv2.weight"] == (128, 48, 5, 5)
    assert shapes["conv3.weight"] == (192, 256, 3, 3) and shapes["conv5.weight"] == (128, 192, 3, 3)
    assert shapes["fc6.weight"] == (2048, 9216) and shapes["fc8.weight"] == (5, 4096)
    x = torch.randn(3, 3, 224, 224)
    labels = torch.tensor([1, 7, 3])
    out_single, out_towers = single(x), towers(x)
    torch.testing.assert_close(out_towers, out_single, rtol=1e-4, atol=1e-5)
    torch.nn.functional.cross_entropy(out_single, labels).backward()
    torch.nn.functional.cross_entropy(out_towers, labels).backward()
    g0, g1 = (_grads(t) for t in towers.towers)
    for key, grad in _grads(single).items():
        torch.testing.assert_close(torch.cat([g0[key], g1[key]]), grad, rtol=1e-3, atol=1e-6)
    merged = towers.single_state_dict()
    assert all(torch.equal(merged[k], v) for k, v in single.state_dict().items())


CALLER_GROUP = """
import sys
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from helpers_train import tiny_config
from alexnet.evaluate import evaluate_checkpoints
from alexnet.train import fit

store = dist.HashStore()  # the caller's own group (gloo, a world of one), made before the library runs
dist.init_process_group("gloo", store=dist.PrefixStore("caller", store), rank=0, world_size=1)
summary = fit(tiny_config({store_path!r}, "run.epochs=1"), {run!r}, progress=False)
assert dist.is_initialized(), "fit tore down the caller's process group"
evaluate_checkpoints([summary["latest"]], {store_path!r}, progress=False)
assert dist.is_initialized(), "evaluate_checkpoints tore down the caller's process group"
dist.destroy_process_group()
print("kept")
"""


def test_a_callers_process_group_survives_fit_and_evaluation(tmp_path):
    """The library tears down only a process group it created (init_distributed's `owns_group`)."""
    store = make_store(tmp_path, n_train=8, n_val=2)
    script = CALLER_GROUP.format(tests=str(Path(__file__).parent), store_path=str(store), run=str(tmp_path / "run"))
    out = subprocess.run([sys.executable, "-c", script], env=env_one_thread(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "kept"
