"""Golden outputs: the paper's network and torchvision's variant, seed 0, a fixed input, recorded values.

Any change to the layers, their order, the initialisation, the LRN constants or the towers moves these
numbers. They were recorded with torch 2.14.1 on the CPU and agree between the C++ and the pure-PyTorch
LRN to about 1e-6; a deliberate change of the network must re-record them and say why.

"alexnet, format 1" is the paper network as checkpoint format 1 computed it (inverted dropout, LRN alpha
1e-4 undivided); its values were recorded before format 2 made the paper's dropout and alpha / 5 the
default (2026-12-05), and a format-1 checkpoint must still give them.
"""

import pytest
import torch

from alexnet.checkpoint import FORMAT_V1, save_checkpoint
from alexnet.config import config_to_dict, load_config
from alexnet.models import create_model
from alexnet.models.build import load_trained

FORMAT_1_READINGS = {"dropout_form": "inverted", "lrn_alpha": "printed"}
GOLDEN = {
    # key: (model name, overrides, logits[0, :4], logits[1, -3:], sum |logits|, sum of fc7 features)
    "alexnet": ("alexnet", {}, [-0.093705, -0.185744, -0.142844, -0.230587], [-0.138421, -0.273966, -0.092891],
                555.6971, 8238.3883),
    "alexnet, format 1": ("alexnet", FORMAT_1_READINGS, [-0.083281, -0.306003, -0.565262, -0.867323],
                          [-0.181363, -1.071431, -0.284381], 1353.1168, 8792.1210),
    "alexnet_owt": ("alexnet_owt", {}, [-0.077099, 0.018821, 0.017154, -0.050598], [-0.16433, -0.033408, -0.033271],
                    160.03664, 814.18803),
}


def _input() -> torch.Tensor:
    """Two 224x224 images, deterministic without any random generator, about the paper's raw pixel scale."""
    ramp = torch.arange(2 * 3 * 224 * 224, dtype=torch.float64) * 0.001
    return (torch.sin(ramp) * 60).reshape(2, 3, 224, 224).float()


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_seed_0_outputs_match_the_recorded_values(key):
    name, overrides = GOLDEN[key][:2]
    torch.manual_seed(0)
    _check(create_model(name, num_classes=1000, **overrides).eval(), key)


def test_a_format_1_checkpoint_keeps_its_outputs(tmp_path):
    """A checkpoint as format 1 wrote it (its config without the keys format 2 added) loads to the network it
    was trained as: inverted dropout, LRN alpha undivided."""
    torch.manual_seed(0)
    weights = create_model("alexnet", num_classes=1000).state_dict()  # the initialisation is unchanged
    config = config_to_dict(load_config(None, ["model.num_classes=1000"]))
    for key in ("dropout_form", "lrn_alpha"):
        del config["model"][key]
    del config["optim"]["decay_biases"], config["optim"]["bias_lr_scale"]
    save_checkpoint({"format": FORMAT_V1, "model": weights, "config": config, "classes": ["a"] * 1000,
                     "class_names": ["a"] * 1000, "mean": torch.zeros(3, 256, 256)}, tmp_path / "old.pt")
    loaded = load_trained(tmp_path / "old.pt")
    assert (loaded.config.model.dropout_form, loaded.config.model.lrn_alpha) == ("inverted", "printed")
    _check(loaded.model, "alexnet, format 1")


def _check(model: torch.nn.Module, key: str) -> None:
    first, last, abs_sum, feature_sum = GOLDEN[key][2:]
    x = _input()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (2, 1000) and features.shape == (2, 4096)
    torch.testing.assert_close(logits[0, :4], torch.tensor(first), rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(logits[1, -3:], torch.tensor(last), rtol=1e-4, atol=2e-5)
    assert float(logits.double().abs().sum()) == pytest.approx(abs_sum, rel=1e-5)
    assert float(features.double().sum()) == pytest.approx(feature_sum, rel=1e-5)
