"""Figure 3's kernels: the colour share per tower measures what it says, and the figure is drawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet.analysis.kernels import RANDOM_COLOUR_SHARE, colour_share, describe, draw
from alexnet.cli import main
from alexnet.config import load_config
from alexnet.models import create_model
from alexnet.models.build import TrainedNetwork
from alexnet.train import fit
from helpers_train import make_store, tiny_config


def test_colour_share_is_zero_for_grey_kernels_one_for_pure_colour_and_two_thirds_at_random():
    torch.manual_seed(0)
    grey = torch.randn(10, 1, 11, 11).expand(10, 3, 11, 11)
    colour = torch.randn(10, 3, 11, 11)
    colour = colour - colour.mean(dim=1, keepdim=True)
    assert torch.allclose(colour_share(grey), torch.zeros(10), atol=1e-6)
    assert torch.allclose(colour_share(colour), torch.ones(10), atol=1e-6)
    assert float(colour_share(torch.randn(2000, 3, 11, 11)).mean()) == pytest.approx(RANDOM_COLOUR_SHARE, abs=0.01)


def test_the_paper_nets_two_towers_are_measured_and_drawn_apart(tmp_path):
    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=10)
    with torch.no_grad():
        w = model.conv1.weight
        w[:48] = w[:48].mean(dim=1, keepdim=True)  # tower 1 sees luminance only
        w[48:] -= w[48:].mean(dim=1, keepdim=True)  # tower 2 sees colour differences only
    config = load_config("demo").with_num_classes(10, "test")
    trained = TrainedNetwork(model, config, [str(i) for i in range(10)], [str(i) for i in range(10)],
                      torch.zeros(3, 256, 256), tmp_path / "x.pt")
    info = describe(trained)
    assert [b["kernels"] for b in info["towers"]] == [[0, 48], [48, 96]]
    assert info["towers"][0]["mean_colour_share"] < 1e-6 and info["towers"][1]["mean_colour_share"] > 1 - 1e-6
    out = draw(trained, tmp_path / "k.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > im.width  # two blocks, one above the other


def test_kernels_command_on_a_trained_checkpoint(tmp_path, capsys):
    store = make_store(tmp_path, n_train=4, n_val=1)
    fit(tiny_config(store, "run.epochs=1"), tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    capsys.readouterr()  # fit's own lines
    assert main(["kernels", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["towers"]) == 1 and len(info["towers"][0]["colour_share"]) == 32  # cifar_relu: 32 kernels
    assert Path(info["image"]).is_file() and info["image"] == str(tmp_path / "run" / "analysis" / "kernels.png")
    section = json.loads((tmp_path / "run" / "analysis" / "kernels.json").read_text())
    assert section["image"] == "kernels.png" and "colour share" in section["summary"]
