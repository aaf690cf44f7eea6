"""Section 3.3's CIFAR-10 experiment: the locally connected layer against a loop over positions, the
conv-local nets of cuda-convnet's layer files, their per-layer optimiser settings, the held-out split, and
the experiment end to end at a tiny budget, killed and resumed. Nothing here asserts the scientific outcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.data.prepare import prepare_store
from alexnet.experiments import lrn_cifar
from alexnet.experiments.data import hold_out
from alexnet.experiments.runner import Runner
from alexnet.models.local import LocallyConnected2d
from alexnet.models.lrn import LocalResponseNorm
from alexnet.models.registry import create_model
from alexnet.models.small import CONVLOCAL_DECAY
from alexnet.optim import PaperSGD, parameter_groups, set_lr
from helpers_train import make_image_folder


def _loop_reference(layer: LocallyConnected2d, x: torch.Tensor) -> torch.Tensor:
    """Each output position as its own matrix product over its padded patch."""
    k, p, s = layer.kernel_size, layer.padding, layer.stride
    xp = torch.nn.functional.pad(x, (p, p, p, p))
    oh, ow = layer.out_hw
    out = torch.empty(x.shape[0], layer.out_channels, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * s:i * s + k, j * s:j * s + k].reshape(x.shape[0], -1)
            out[:, :, i, j] = patch @ layer.weight[i * ow + j] + layer.bias[:, i, j]
    return out


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_locally_connected_equals_a_loop_over_positions_forward_and_backward(stride, padding):
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, (7, 7), 3, stride=stride, padding=padding).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    ours, ref = layer(x), _loop_reference(layer, x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * g).sum(), (x, layer.weight, layer.bias))
    refs = torch.autograd.grad((_loop_reference(layer, x) * g).sum(), (x, layer.weight, layer.bias))
    for a, b in zip(grads, refs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_locally_connected_weights_are_not_shared():
    """Changing one position's filters changes that output position only (a convolution would change all)."""
    layer = LocallyConnected2d(2, 3, (4, 4), 3, padding=1)
    x = torch.randn(1, 2, 4, 4)
    before = layer(x).detach()
    with torch.no_grad():
        layer.weight[5].add_(1.0)  # position (1, 1)
    changed = (layer(x).detach() - before).abs().sum(1)[0] > 0
    assert changed.nonzero().tolist() == [[1, 1]]
    with pytest.raises(ValueError, match=r"expects \(N, 2, 4, 4\)"):
        layer(torch.randn(1, 2, 5, 5))


def test_conv_local_nets_follow_the_layer_file():
    lrn, plain = create_model("cifar_convlocal_lrn", 10), create_model("cifar_convlocal", 10)
    assert sum(isinstance(m, LocalResponseNorm) for m in lrn.modules()) == 2
    assert not any(isinstance(m, LocalResponseNorm) for m in plain.modules())
    norm = next(m for m in lrn.modules() if isinstance(m, LocalResponseNorm))
    assert (norm.size, norm.k, norm.beta) == (9, 1.0, 0.75) and norm.alpha == pytest.approx(0.001 / 9)
    # conv1 75*64+64, conv2 1600*64+64, local3 36*(576*64)+64*36, local4 36*(576*32)+32*36, fc10 1152*10+10
    expected = 4864 + 102464 + (1327104 + 2304) + (663552 + 1152) + 11530
    assert sum(p.numel() for p in lrn.parameters()) == sum(p.numel() for p in plain.parameters()) == expected
    assert lrn(torch.randn(2, 3, 24, 24)).shape == (2, 10)
    assert lrn.local3.weight.std().item() == pytest.approx(0.04, rel=0.05)  # the file's initW
    assert lrn.conv1.weight.std().item() == pytest.approx(1e-4, rel=0.1)
    with pytest.raises(ValueError, match="24x24"):
        create_model("cifar_convlocal", 10, input_size=32)


def test_optimizer_groups_give_each_layer_its_decay_and_biases_twice_the_rate():
    model = create_model("cifar_convlocal", 10)
    groups = parameter_groups(model, 0.004)
    opt = PaperSGD(groups, lr=0.001)
    set_lr(opt, 0.001)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model.conv1.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.local3.weight)]["weight_decay"] == pytest.approx(0.004)
    assert by_param[id(model.fc10.weight)]["weight_decay"] == pytest.approx(0.01)
    assert by_param[id(model.fc10.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.fc10.bias)]["lr"] == pytest.approx(0.002)
    assert by_param[id(model.local4.weight)]["lr"] == pytest.approx(0.001)
    assert len(by_param) == len(list(model.parameters())) == 2 * len(CONVLOCAL_DECAY)
    plain = create_model("cifar_relu", 10)
    assert len(parameter_groups(plain, 0.1)) == len(list(plain.parameters()))  # other nets: every parameter


def test_hold_out_moves_the_last_images_of_each_class(tmp_path):
    root = make_image_folder(tmp_path / "images", {"train": 5}, size=8)
    first = sorted((root / "train").iterdir())[0]
    names = sorted(f.name for f in first.iterdir())
    hold_out(root, 2)
    assert sorted(f.name for f in (root / "val" / first.name).iterdir()) == names[-2:]
    assert sorted(f.name for f in first.iterdir()) == names[:-2]
    with pytest.raises(ValueError, match="cannot hold out 3"):
        hold_out(root, 3)


def test_welch_interval():
    assert lrn_cifar.welch_interval([0.1], [0.2, 0.3]) is None
    lo, hi = lrn_cifar.welch_interval([0.10, 0.11, 0.12], [0.20, 0.21, 0.22])
    assert lo < -0.1 < hi < 0  # clearly apart
    lo, hi = lrn_cifar.welch_interval([0.10, 0.20, 0.30], [0.11, 0.21, 0.31])
    assert lo < 0 < hi


class Killed(Exception):
    pass


@pytest.mark.slow
def test_lrn_cifar_end_to_end_killed_and_resumed(tmp_path):
    source = make_image_folder(tmp_path / "images", {"train": 6, "val": 2, "test": 3}, size=32)
    store = tmp_path / "store"
    prepare_store(source, store, size=32, workers=1, progress=False)
    budget = lrn_cifar.BUDGETS["smoke"]
    overrides = (f"data.store={store}", "data.batch_size=8", "data.eval_batch_size=16", "data.workers=0",
                 "run.device=cpu")
    finished = []

    def kill_after_one(outcome):
        finished.append(outcome.key)
        raise Killed

    with pytest.raises(Killed):
        lrn_cifar.run_experiment(Runner(tmp_path / "runs", on_finished=kill_after_one), 2, budget, overrides)
    runner = Runner(tmp_path / "runs")
    results = lrn_cifar.run_experiment(runner, 2, budget, overrides)
    assert len(runner.trained_now) == 4 - 1  # the finished run is not trained again
    assert results["test_split"] == "test" and results["test_images"] == 3 * 4
    for v in ("lrn", "no-lrn"):
        runs = results["variants"][v]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert r["epochs"] == budget.epochs and all(e is not None for e in r["held_out_error"])
            assert 0 <= r["multiview_top1_error"] <= 1 and 0 <= r["centre_top1_error"] <= 1
    record = results["config"]["lrn"]
    assert record["model"]["name"] == "cifar_convlocal_lrn" and record["data"]["crop"] == 24
    assert record["schedule"]["milestones"] == [1, 2]
    d = results["difference"]
    assert d["interval"] is not None and isinstance(d["larger_than_seed_spread"], bool)
    assert "cmrnorm" in results["table"]["setting"] and "n = 2" in results["table"]["ours"]
    assert results["table"]["verdict"] and "13pct" in results["table"]["paper"]
    again = Runner(tmp_path / "runs")
    assert lrn_cifar.run_experiment(again, 2, budget, overrides)["variants"] == results["variants"]
    assert again.trained_now == []
    lrn_cifar.plot(results, tmp_path / "lrn.png")
    assert Path(tmp_path / "lrn.png").stat().st_size > 10_000


def _cmrnorm_reference(x: torch.Tensor, size: int, scale: float, power: float) -> torch.Tensor:
    """cuda-convnet's cross-map normalisation written from its kernel: for map f the window is maps
    f - size // 2 .. f - size // 2 + size - 1 clipped to the existing maps, and the output is
    x * (1 + scale / size * sum of squares over the window) ^ -power (the parser divides scale by size)."""
    c = x.shape[1]
    out = torch.empty_like(x)
    for f in range(c):
        lo, hi = max(0, f - size // 2), min(c, f - size // 2 + size)
        out[:, f] = x[:, f] * (1 + scale / size * (x[:, lo:hi] ** 2).sum(1)) ** -power
    return out


def test_the_nets_lrn_is_cuda_convnets_cmrnorm():
    norm = next(m for m in create_model("cifar_convlocal_lrn", 10).modules() if isinstance(m, LocalResponseNorm))
    x = 30 * torch.randn(2, 64, 5, 5, dtype=torch.float64).clamp_min(0)  # post-ReLU maps, a large enough scale
    ref = _cmrnorm_reference(x, 9, 0.001, 0.75)
    assert (ref - x).abs().max() > 0.1  # the normalisation does something at this scale
    torch.testing.assert_close(norm(x), ref, rtol=1e-12, atol=1e-12)


def test_t975_is_students_quantile_for_any_degrees_of_freedom():
    from alexnet.experiments.runner import t975

    # the printed tables' values, and Welch's fractional degrees of freedom between them
    assert t975(1) == pytest.approx(12.706, abs=1e-3) and t975(2) == pytest.approx(4.303, abs=1e-3)
    assert t975(10) == pytest.approx(2.228, abs=1e-3) and t975(1000) == pytest.approx(1.962, abs=1e-3)
    assert t975(2) > t975(2.5) > t975(3)
    assert all(t975(d) > t975(d + 1) for d in range(1, 130))


@pytest.mark.slow
def test_cifar10_store_holds_out_the_last_training_images_of_each_class(tmp_path, monkeypatch):
    import os

    from alexnet.data.store import Store
    from alexnet.experiments.data import cifar10_store

    data = Path(os.environ.get("ALEXNET_DATA", "../shared/data"))
    if not (data / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip(f"{data}/cifar10-jpeg.tar.gz not present")
    monkeypatch.setenv("ALEXNET_DATA", str(data.resolve()))
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    path = cifar10_store(4, 2, log=lambda *_: None, held_out_per_class=1)
    st = Store.open(path)
    assert st.splits == ["train", "val", "test"]
    assert [len(st.labels(s)) for s in st.splits] == [30, 10, 20]
    assert sorted(np.unique(st.labels("val"))) == list(range(10))
    assert not path.with_name(path.name + ".source").exists()  # the extracted subset is gone
    assert cifar10_store(4, 2, log=lambda *_: None, held_out_per_class=1) == path  # prepared once


def test_lrn_verdict_reads_the_sign_and_the_interval():
    from alexnet.experiments.lrn_cifar import lrn_verdict

    full, reduced = {"reduced": False}, {"reduced": True}
    assert lrn_verdict({"interval": [-0.03, -0.01]}, full) == "reproduced"  # the paper's -2 points inside
    assert lrn_verdict({"interval": [-0.03, -0.01]}, reduced) == "direction only"  # size not comparable
    assert lrn_verdict({"interval": [-0.05, -0.03]}, full) == "direction only"
    assert lrn_verdict({"interval": [-0.01, 0.01]}, full) == "not at this budget"
    assert lrn_verdict({"interval": [0.01, 0.02]}, full) == "opposite sign"
    assert lrn_verdict({"interval": None}, full).startswith("not testable")
