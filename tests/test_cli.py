"""What a new user meets: help, version, config show, clear one-line errors, no stray run folders,
predict with an ensemble, finetune that keeps the checkpoint's network, the package as a wheel."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile

import pytest
import torch

from alexnet import __version__
from alexnet.checkpoint import TrainingState
from alexnet.cli import build_parser, main
from alexnet.config import load_config
from alexnet.train import fit
from helpers_train import alexnet_cmd, env_one_thread, make_store, tiny_config

TINY = [  # the paper preset, made small enough for the tiny store; model.num_classes is left to the store
    "--set", "model.name=cifar_relu", "--set", "model.input_size=32", "--set", "data.crop=32",
    "--set", "data.batch_size=8", "--set", "data.in_memory=true", "--set", "data.workers=0",
    "--set", "data.input_scale=64.0", "--set", "data.lighting_std=0.0", "--set", "run.epochs=1",
    "--set", "run.device=cpu",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("cli"), n_train=8, n_val=2)


@pytest.fixture(scope="module")
def tanh_run(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("tanh") / "run"
    fit(tiny_config(store, "model.name=cifar_tanh", "run.epochs=1"), run, progress=False)
    return run


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_speaks_to_users_and_every_option_is_explained(capsys):
    parser = build_parser()
    text = parser.format_help()
    assert "Start with:" in text and "alexnet demo" in text and "alexnet prepare" in text
    for name, sub in _subparsers(parser).items():
        assert sub.description and "example:" in sub.format_help(), name
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"alexnet {name}: {action.dest} has no help line"
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"alexnet {__version__}"


def test_config_show_prints_toml_that_reads_back(tmp_path, capsys):
    assert main(["config", "show", "demo", "--set", "run.epochs=3"]) == 0
    out = capsys.readouterr().out
    (tmp_path / "mine.toml").write_text(out)
    assert load_config(tmp_path / "mine.toml") == load_config("demo", ["run.epochs=3"])


def test_paper_preset_on_a_4_class_store_takes_the_class_count_from_the_store(store, tmp_path, capsys):
    assert main(["train", "--data", str(store), "--run-dir", str(tmp_path / "run"), "--no-progress", *TINY]) == 0
    state = TrainingState.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert state.config.model.num_classes == 4 and state.model["fc4.weight"].shape[0] == 4
    assert "training finished after 1 epochs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("run.device=tpu", "device 'tpu' is not a device name"),
        pytest.param("run.device=cuda", "no CUDA GPU", marks=pytest.mark.skipif(
            torch.cuda.is_available(), reason="this machine has a GPU")),
        ("model.name=alexnet_v9", "model.name = 'alexnet_v9' is not a registered model"),
        ("model.num_classes=7", "model.num_classes = 7 but store"),
    ],
)
def test_user_errors_are_one_line_and_leave_no_run_folder(store, tmp_path, capsys, setting, message):
    run = tmp_path / "run"
    assert main(["train", "--data", str(store), "--run-dir", str(run), *TINY, "--set", setting]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not run.exists()


def test_a_missing_store_leaves_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--run-dir", str(run), *TINY]) == 1
    assert "nowhere" in capsys.readouterr().err and not run.exists()


@pytest.mark.slow
def test_a_bad_device_from_the_real_command_line_is_one_line_without_traceback(store, tmp_path):
    out = subprocess.run(
        alexnet_cmd("train", "--data", str(store), "--run-dir", str(tmp_path / "r"), *TINY, "--set", "run.device=tpu"),
        capture_output=True, text=True, env=env_one_thread(), timeout=120,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "alexnet train: error: device 'tpu' is not a device name; use auto, cpu, cuda or cuda:N (run.device)"
    ]


def test_predict_takes_a_repeatable_ensemble_option(tanh_run, store, capsys):
    ckpt = str(tanh_run / "checkpoints" / "latest.pt")
    images = sorted((store.parent / "images" / "val").rglob("*.png"))[:2]
    for argv in (
        ["predict", "--ensemble", ckpt, ckpt, str(images[0]), str(images[1]), "--json"],
        ["predict", ckpt, str(images[0]), str(images[1]), "--ensemble", ckpt, "--ensemble", ckpt, "--json"],
    ):
        assert main(argv) == 0
        results = json.loads(capsys.readouterr().out)
        assert [r["image"] for r in results] == [str(images[0]), str(images[1])]


def test_finetune_keeps_the_checkpoints_network_and_refuses_one_that_cannot_take_its_weights(
    tanh_run, tmp_path, capsys
):
    other = make_store(tmp_path, n_train=4, n_val=1, classes=("n03394916", "n03417042", "n03425413"))
    ckpt = str(tanh_run / "checkpoints" / "best.pt")
    # The cifar10 preset names cifar_relu; the checkpoint is cifar_tanh, and cifar_tanh it stays.
    common = ["--config", "cifar10", "--data", str(other), "--no-progress", "--set", "run.epochs=1",
              "--set", "data.workers=0", "--set", "run.device=cpu", "--set", "data.eval_batch_size=8",
              "--set", "data.batch_size=4"]
    assert main(["finetune", ckpt, "--run-dir", str(tmp_path / "ft"), *common]) == 0
    out = capsys.readouterr().err  # the log (the summary is on stdout)
    assert "cifar_tanh from" in out and "fc4.bias, fc4.weight, which start fresh for 3 classes" in out
    state = TrainingState.load(tmp_path / "ft" / "checkpoints" / "latest.pt")
    assert state.config.model.name == "cifar_tanh" and state.config.data.input_scale == 64.0
    assert state.model["fc4.weight"].shape[0] == 3
    bad = ["finetune", ckpt, "--run-dir", str(tmp_path / "ft2"), *common, "--set", "model.name=alexnet",
           "--set", "model.input_size=224"]
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err or "model.input_size = 224 but data.crop = 32" in err
    assert not (tmp_path / "ft2").exists()


@pytest.mark.slow
def test_the_wheel_carries_the_presets_and_the_kernel_source(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(root)], check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("alexnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"alexnet/configs/paper.toml", "alexnet/configs/demo.toml", "alexnet/configs/cifar10.toml",
            "alexnet/csrc/lrn.cpp"} <= set(names)
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires and not any("==" in line for line in requires), requires
