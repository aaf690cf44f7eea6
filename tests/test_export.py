"""Export: safetensors weights rebuild the network; the ONNX model computes what PyTorch computes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from alexnet.checkpoint import FORMAT, load_checkpoint, load_weights
from alexnet.config import config_from_dict, load_config
from alexnet.export import export
from alexnet.models.build import build_model
from helpers_train import save_trained

CLASSES = ["n01440764", "n02102040", "n02979186"]


def _checkpoint(tmp_path, name: str, input_size: int):
    config = load_config(
        None,
        [
            f"model.name={name}",
            "model.num_classes=3",
            f"model.input_size={input_size}",
            f"data.crop={input_size}",
            "data.input_scale=64.0",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    path = tmp_path / f"{name}.pt"
    names = ["tench", "English springer", "cassette player"]
    save_trained(path, model, config, CLASSES, names, torch.full((3, input_size + 4, input_size + 4), 100.0))
    return model, path


def test_safetensors_rebuilds_the_network(tmp_path):
    model, path = _checkpoint(tmp_path, "cifar_relu", 32)
    out = export(path, "safetensors")
    assert out == tmp_path / "cifar_relu.safetensors"
    weights, meta = load_weights(out)
    assert meta["format"] == FORMAT
    rebuilt = build_model(config_from_dict(json.loads(meta["config"])).model)
    rebuilt.load_state_dict(weights)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))
    assert json.loads(meta["class_names"])[1] == "English springer"
    assert json.loads(meta["config"])["data"]["input_scale"] == 64.0
    mean = np.load(tmp_path / meta["input_mean_file"])  # test-time input needs the store's mean image
    assert mean.shape == tuple(load_checkpoint(path)["mean"].shape) and mean.dtype == np.float32
    np.testing.assert_array_equal(mean, load_checkpoint(path)["mean"].numpy())


@pytest.mark.parametrize(("name", "size"), [("cifar_relu", 32), pytest.param("alexnet", 224, marks=pytest.mark.slow)])
def test_onnx_matches_pytorch_under_onnxruntime(tmp_path, name, size):
    import onnx
    import onnxruntime

    model, path = _checkpoint(tmp_path, name, size)
    out = export(path, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, size, size)  # a batch size other than the traced one
    got = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classes"]) == CLASSES and "/ 64.0" in props["input"]


def test_exported_weights_load_as_a_trained_network(tmp_path):
    from alexnet.models.build import load_trained

    model, path = _checkpoint(tmp_path, "cifar_relu", 32)
    loaded = load_trained(export(path, "safetensors"))
    assert loaded.classes == CLASSES and loaded.class_names[2] == "cassette player"
    assert loaded.config.data.input_scale == 64.0 and loaded.mean.shape == (3, 36, 36)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    (tmp_path / "cifar_relu.mean.npy").unlink()
    with pytest.raises(Exception, match="mean image"):
        load_trained(tmp_path / "cifar_relu.safetensors")


def test_onnx_export_without_the_onnx_package_is_one_line_naming_the_extra(tmp_path):
    """With `onnx` not importable, `alexnet export --format onnx` exits 1 with one line naming the extra to
    install, and writes nothing (before, it exited 70 as a bug and left NAME.mean.npy behind)."""
    _, path = _checkpoint(tmp_path, "cifar_relu", 32)
    hide = tmp_path / "hide" / "onnx"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError(\"No module named 'onnx'\")\n")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    result = subprocess.run([sys.executable, "-m", "alexnet", "export", str(path), "--format", "onnx", "--out",
                             str(out)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(hide.parent)})
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install 'alexnet[onnx]'" in result.stderr
    assert list(out.parent.iterdir()) == []
