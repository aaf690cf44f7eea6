"""Export: safetensors weights rebuild the network; the ONNX model computes what PyTorch computes."""

import json

import numpy as np
import pytest
import torch

from alexnet.checkpoint import load_checkpoint, load_weights
from alexnet.config import load_config
from alexnet.export import export
from alexnet.models import create_model
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
    model = create_model(name, num_classes=3, input_size=input_size).eval()
    path = tmp_path / f"{name}.pt"
    names = ["tench", "English springer", "cassette player"]
    save_trained(path, model, config, CLASSES, names, torch.full((3, input_size + 4, input_size + 4), 100.0))
    return model, path


def test_safetensors_rebuilds_the_network(tmp_path):
    model, path = _checkpoint(tmp_path, "cifar_relu", 32)
    out = export(path, "safetensors")
    assert out == tmp_path / "cifar_relu.safetensors"
    weights, meta = load_weights(out)
    rebuilt = create_model(meta["model"], num_classes=len(json.loads(meta["classes"])))
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
