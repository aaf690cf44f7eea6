"""The Python API a user builds on: `import alexnet`, pretrained folders, torch.hub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.cli import main as cli_main
from alexnet.config import load_config
from alexnet.models.build import TrainedNetwork

ROOT = Path(__file__).resolve().parent.parent


def test_import_is_light_and_lists_the_public_api():
    code = "import alexnet, sys; print('torch' in sys.modules, sorted(dir(alexnet)) == sorted(alexnet.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "True"]
    assert set(alexnet.__all__) == {"__version__", *alexnet._API}
    for name in alexnet.__all__:
        assert getattr(alexnet, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        alexnet.nope  # noqa: B018


def test_create_model_is_the_paper_network():
    model = alexnet.create_model("alexnet")
    assert sum(p.numel() for p in model.parameters()) == 60_965_224
    assert "alexnet" in alexnet.list_models() and "alexnet_owt" in alexnet.list_models()


def _trained(classes: int = 5) -> TrainedNetwork:
    torch.manual_seed(0)
    config = load_config("demo", [f"model.num_classes={classes}", "data.store=/somewhere/stores/tiny"])
    model = alexnet.create_model("alexnet", classes).eval()
    mean = torch.rand(3, 256, 256) * 255
    ids = [f"n{i:08d}" for i in range(classes)]
    return TrainedNetwork(model, config, ids, [f"class {i}" for i in range(classes)], mean, Path("memory"))


def test_save_pretrained_and_from_pretrained_give_identical_outputs(tmp_path):
    trained = _trained()
    folder = alexnet.save_pretrained(trained, tmp_path / "net")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "training_config.toml"]
    described = json.loads((folder / "config.json").read_text())
    assert described["architecture"] == "alexnet" and described["num_classes"] == 5
    assert described["dropout"] == {"p": 0.5, "form": "paper"}
    assert described["lrn"]["multiplier"] == pytest.approx(1e-4 / 5) and described["lrn"]["k"] == 2
    assert described["input"]["crop"] == 224 and described["classes"][1] == "n00000001"
    card = (folder / "README.md").read_text()
    assert "alexnet.from_pretrained" in card and "stores/tiny" not in card and "`tiny`" in card
    assert "alexnet train --config training_config.toml --data tiny" in card
    assert load_config(str(folder / "training_config.toml")) == trained.config

    loaded = alexnet.from_pretrained(folder)
    assert not loaded.model.training and loaded.class_names == trained.class_names
    assert torch.equal(loaded.mean, trained.mean)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), trained.model(x))


def test_from_pretrained_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder or file"):
        alexnet.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="has no model.safetensors"):
        alexnet.from_pretrained(tmp_path / "empty")


def test_torch_hub_loads_the_paper_network_and_trained_weights(tmp_path):
    fresh = torch.hub.load(str(ROOT), "alexnet", source="local")
    assert sum(p.numel() for p in fresh.parameters()) == 60_965_224
    trained = _trained()
    folder = alexnet.save_pretrained(trained, tmp_path / "net")
    net = torch.hub.load(str(ROOT), "alexnet", source="local", weights=str(folder))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(net(x), trained.model(x))
    assert net.alexnet_trained.classes == trained.classes
    with pytest.raises(RuntimeError, match="could not download .* pass its local path"):
        torch.hub.load(str(ROOT), "alexnet", source="local", weights="http://127.0.0.1:9/none.safetensors")


def test_export_command_writes_a_pretrained_folder(tmp_path, capsys):
    from alexnet.checkpoint import TrainingState

    trained = _trained()
    state = TrainingState(trained.model.state_dict(), trained.config, trained.classes, trained.class_names,
                          trained.mean, metrics=[{"epoch": 3, "train_loss": 1.25, "val_top1_error": 0.3}])
    state.save(tmp_path / "best.pt")
    assert cli_main(["export", str(tmp_path / "best.pt"), "--format", "pretrained", "--out",
                     str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": str(tmp_path / "out")}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "3 epochs; last training loss 1.250, validation top-1 error 30.0 %" in card
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(alexnet.from_pretrained(tmp_path / "out").model(x), trained.model(x))


def test_fit_from_python_writes_nothing_to_stdout_and_train_json_is_one_document(tmp_path, capsys):
    from alexnet.config import save_config
    from helpers_train import make_store, tiny_config

    store = make_store(tmp_path, n_train=4, n_val=2, size=36)
    config = tiny_config(store, "run.epochs=1")
    summary = alexnet.fit(config, tmp_path / "run", progress=False)
    assert summary["status"] == "finished"
    assert capsys.readouterr().out == ""  # the epoch line went to the "alexnet" logger, which shows nothing here

    save_config(config, tmp_path / "tiny.toml")
    assert cli_main(["train", "--config", str(tmp_path / "tiny.toml"), "--run-dir", str(tmp_path / "cli"),
                     "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # one JSON document: nothing printed before or after it
    assert result["status"] == "finished" and "epoch 1/1" in captured.err


def test_without_the_plots_and_tensorboard_extras_training_goes_on_and_says_what_it_skipped(
        tmp_path, monkeypatch, capsys, caplog):
    from alexnet import rundir
    from helpers_train import make_store, tiny_config

    for module in ("matplotlib", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError, as when not installed
    monkeypatch.setattr(rundir, "_SKIPPED", set())
    store = make_store(tmp_path, n_train=4, n_val=2, size=36)
    with caplog.at_level("WARNING", logger="alexnet"):
        summary = alexnet.fit(tiny_config(store, "run.epochs=2"), tmp_path / "run", progress=False)
    assert summary["status"] == "finished" and (tmp_path / "run" / "metrics.jsonl").is_file()
    assert not (tmp_path / "run" / "curves.png").exists() and not (tmp_path / "run" / "tensorboard").exists()
    skipped = [r.getMessage() for r in caplog.records if "is not installed" in r.getMessage()]
    assert skipped == ["matplotlib is not installed: no curves.png in run folders (pip install 'alexnet[plots]')",
                       "tensorboard is not installed: no TensorBoard event files in run folders "
                       "(pip install 'alexnet[tensorboard]')"]  # once each, not once per epoch

    # a command that needs the missing extra: one line naming it, and nothing written
    capsys.readouterr()  # (the skip warnings above reach stderr too where an earlier command showed the log)
    assert cli_main(["kernels", str(tmp_path / "run" / "checkpoints" / "latest.pt"), "--out",
                     str(tmp_path / "k.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["alexnet kernels: error: alexnet kernels needs the matplotlib package, which is not installed: "
                   "pip install 'alexnet[plots]' (nothing was written)"]
    assert not (tmp_path / "k.png").exists()
