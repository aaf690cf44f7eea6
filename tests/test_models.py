"""The network of Section 3 / Figure 2, number by number, and every registered variant."""

import json
import math

import pytest
import torch
import torchvision

from alexnet.cli import main as cli_main
from alexnet.models import AlexNet, create_model, list_models, model_config
from alexnet.models.summary import summarize

PAPER_MAPS = {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
              "conv5": (256, 13, 13)}


def conv_outputs(model: AlexNet, size: int) -> dict[str, tuple]:
    shapes = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, o.shape[1:]))
             for n in model.blocks]
    with torch.no_grad():
        pooled = model.conv_features(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    shapes["pool5"] = pooled.shape[1:]
    return shapes


@pytest.fixture(scope="module")
def paper() -> AlexNet:
    torch.manual_seed(0)
    return create_model("alexnet")


def test_exact_parameter_count(paper):
    assert sum(p.numel() for p in paper.parameters()) == 60_965_224


def test_layer_shapes_and_names(paper):
    assert paper.conv1.weight.shape == (96, 3, 11, 11)
    assert paper.conv2.weight.shape == (256, 48, 5, 5)
    assert paper.conv3.weight.shape == (384, 256, 3, 3)
    assert paper.conv4.weight.shape == (384, 192, 3, 3)
    assert paper.conv5.weight.shape == (256, 192, 3, 3)
    assert paper.fc6.weight.shape == (4096, 9216)
    assert paper.fc7.weight.shape == (4096, 4096)
    assert paper.fc8.weight.shape == (1000, 4096)


@pytest.mark.parametrize("size", [224, 227])
def test_feature_maps(size):
    model = create_model("alexnet", input_size=size)
    shapes = conv_outputs(model, size)
    for name, want in PAPER_MAPS.items():
        assert tuple(shapes[name]) == want, name
    assert tuple(shapes["pool5"]) == (256, 6, 6)


def test_input_size_other_than_224_or_227_is_refused():
    with pytest.raises(ValueError, match="224"):
        create_model("alexnet", input_size=256)


@pytest.mark.parametrize(("layer", "in_channels"), [("conv2", 96), ("conv4", 384), ("conv5", 384)])
def test_towers_see_only_their_own_inputs(paper, layer, in_channels):
    conv = getattr(paper, layer)
    x = torch.randn(1, in_channels, 13, 13)
    x2 = x.clone()
    x2[:, in_channels // 2:] += torch.randn_like(x2[:, in_channels // 2:])  # change tower 2's inputs only
    with torch.no_grad():
        y, y2 = conv(x), conv(x2)
    half = y.shape[1] // 2
    assert torch.equal(y[:, :half], y2[:, :half])  # tower 1 untouched
    assert not torch.allclose(y[:, half:], y2[:, half:])


def test_lrn_stays_within_a_tower(paper):
    paper.eval()
    x = torch.randn(1, 96, 55, 55)
    x2 = x.clone()
    x2[:, 48:] += 5.0  # tower 2's conv1 maps
    with torch.no_grad():
        y, y2 = paper.conv1_post(x), paper.conv1_post(x2)
    assert torch.equal(y[:, :48], y2[:, :48]) and not torch.equal(y[:, 48:], y2[:, 48:])
    assert create_model("alexnet_notowers").config.towers == 1


def test_conv3_sees_both_towers(paper):
    x = torch.randn(1, 256, 13, 13)
    x2 = x.clone()
    x2[:, 128:] += 1.0
    with torch.no_grad():
        y, y2 = paper.conv3(x), paper.conv3(x2)
    assert not torch.allclose(y[:, :192], y2[:, :192]) and not torch.allclose(y[:, 192:], y2[:, 192:])


def test_paper_initialisation(paper):
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w = getattr(paper, name).weight
        assert abs(w.mean().item()) < 3e-3 * max(1.0, 1e3 / w.numel()) ** 0.5
        assert w.std().item() == pytest.approx(0.01, rel=0.05 if w.numel() > 30_000 else 0.1), name
        bias = getattr(paper, name).bias
        want = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(bias == want), name


def test_cuda_convnet_and_kaiming_initialisation():
    torch.manual_seed(0)
    cc = create_model("alexnet", init="cuda-convnet")
    for name in ("conv3", "conv4", "conv5"):
        assert getattr(cc, name).weight.std().item() == pytest.approx(0.03, rel=0.03)
    assert cc.conv1.weight.std().item() == pytest.approx(0.01, rel=0.1)
    kai = create_model("alexnet", init="kaiming")
    for name in ("conv2", "conv3", "fc6"):
        w = getattr(kai, name).weight
        assert w.std().item() == pytest.approx(math.sqrt(2.0 / w[0].numel()), rel=0.05), name
        assert torch.all(getattr(kai, name).bias == 0)
    with pytest.raises(ValueError, match="init"):
        create_model("alexnet", init="xavier")


def test_forward_features_are_fc7_after_relu(paper):
    paper.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = paper.forward_features(x)
        logits = paper(x)
    assert feats.shape == (2, 4096) and feats.min() >= 0
    torch.testing.assert_close(paper.fc8(0.5 * feats), logits)  # the paper's dropout halves at test time


@pytest.mark.parametrize("form", ["paper", "inverted"])
def test_dropout_is_on_fc6_and_fc7_only(form):
    """Section 4.2: in training about half the outputs of fc6 and fc7 (after ReLU) are zeroed before the next
    layer, the rest passed unscaled (the paper's form; inverted: doubled); in evaluation all of them, halved
    (inverted: unchanged). The conv features reach fc6 undropped."""
    torch.manual_seed(0)
    kwargs = {} if form == "paper" else {"dropout_form": form}  # the paper's form is the default
    model = create_model("alexnet", num_classes=10, init="kaiming", **kwargs)
    kept_scale, eval_scale = (1.0, 0.5) if form == "paper" else (2.0, 1.0)
    seen = {}

    def keep(name):
        def hook(module, args, out=None):
            seen[name] = (args[0] if out is None else out).clone()
        return hook

    hooks = [model.act6.register_forward_hook(keep("act6")), model.act7.register_forward_hook(keep("act7")),
             *(getattr(model, n).register_forward_pre_hook(keep(n)) for n in ("fc6", "fc7", "fc8"))]
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        model.eval()
        model(x)
        fc6_eval = seen["fc6"]
        for act, nxt in (("act6", "fc7"), ("act7", "fc8")):
            torch.testing.assert_close(seen[nxt], eval_scale * seen[act])
        model.train()
        model(x)
    for h in hooks:
        h.remove()
    for act, nxt in (("act6", "fc7"), ("act7", "fc8")):
        live = seen[act] > 0
        dropped = (seen[nxt] == 0) & live
        assert 0.4 < dropped.sum() / live.sum() < 0.6, nxt
        kept = live & ~dropped
        torch.testing.assert_close(seen[nxt][kept], kept_scale * seen[act][kept])
    assert torch.equal(seen["fc6"], fc6_eval)
    assert create_model("alexnet_nodropout").drop6.p == 0.0


def test_a_variants_defining_change_wins_over_the_configs_default():
    """build_model passes model.dropout (0.5 unless set): alexnet_nodropout must still have no dropout."""
    from alexnet.config import ModelConfig
    from alexnet.models.build import build_model

    model = build_model(ModelConfig(name="alexnet_nodropout", num_classes=10, dropout=0.5))
    assert model.drop6.p == 0.0 and model.drop7.p == 0.0
    assert build_model(ModelConfig(name="alexnet", num_classes=10, dropout=0.3)).drop6.p == 0.3


@pytest.mark.parametrize("name", list_models())
def test_every_variant_forward_backward(name):
    torch.manual_seed(0)
    small = name.startswith("cifar")
    model = create_model(name, num_classes=10)
    side = 24 if "convlocal" in name else 32 if small else 224  # the conv-local nets take 24x24 crops
    x = torch.randn(2, 3, side, side)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.forward_features(x).dim() == 2


def test_ablation_configurations():
    onetower = create_model("alexnet_onetower")
    assert [getattr(onetower, f"conv{i}").out_channels for i in range(1, 6)] == [48, 128, 192, 192, 256]
    assert all(getattr(onetower, f"conv{i}").groups == 1 for i in range(1, 6))
    assert onetower.fc6.out_features == 4096
    notowers = create_model("alexnet_notowers")
    assert all(getattr(notowers, f"conv{i}").groups == 1 for i in range(1, 6))
    assert notowers.conv2.weight.shape == (256, 96, 5, 5)
    assert "conv4" not in create_model("alexnet_shallow").blocks
    six = create_model("alexnet_6conv")
    assert six.blocks[-1] == "conv6" and six.conv6.groups == 2 and six.fc6.in_features == 9216
    nonoverlap = model_config("alexnet_nonoverlap")
    assert (nonoverlap.pool_kernel, nonoverlap.pool_stride) == (2, 2)
    assert tuple(conv_outputs(create_model("alexnet_nonoverlap"), 224)["pool5"]) == (256, 6, 6)
    assert not model_config("alexnet_nolrn").lrn
    tanh = create_model("alexnet_tanh")
    modules = list(tanh.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in modules)
    assert not any(getattr(m, "relu", False) for m in modules)  # no ReLU fused into an LRN kernel either
    assert sum(isinstance(m, torch.nn.Tanh) for m in modules) == 7  # conv1-conv5, fc6, fc7
    x = torch.randn(1, 3, 224, 224)
    seen = []
    for name in ("conv1_post", "conv3_post", "conv5_post"):
        getattr(tanh, name).register_forward_hook(lambda m, i, o: seen.append(float(o.min())))
    tanh.eval()(x)
    assert min(seen) < 0  # tanh outputs go negative after every conv block; ReLU's never would


def test_unknown_names_and_overrides_are_explained():
    with pytest.raises(ValueError, match="registered models"):
        create_model("alexnet_v3")
    with pytest.raises(ValueError, match="valid"):
        create_model("alexnet", widht=3)


def test_owt_loads_torchvision_weights_and_matches():
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    ours = create_model("alexnet_owt").eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
    assert sum(p.numel() for p in ours.parameters()) == 61_100_840


def test_summary_totals_and_cli(capsys):
    rows, totals = summarize("alexnet")
    assert totals["params"] == 60_965_224
    neurons = [r["neurons"] for r in rows if r["neurons"]]
    # The paper's counts for conv2..fc8 (its 253,440 for conv1 does not match 55x55x96 = 290,400).
    assert neurons == [290_400, 186_624, 64_896, 64_896, 43_264, 4096, 4096, 1000]
    conv2 = next(r for r in rows if r["layer"] == "conv2")
    assert conv2["macs"] == 27 * 27 * 256 * 48 * 25
    assert cli_main(["summary", "--model", "alexnet_onetower", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["params"] == 59_798_312
    assert cli_main(["summary"]) == 0
    assert "60,965,224" in capsys.readouterr().out


def test_conv1_tower_weight_gradient_equals_plain_conv():
    from alexnet.models.conv import TowerConv2d

    torch.manual_seed(0)
    assert isinstance(create_model("alexnet").conv1, TowerConv2d)
    ours = TowerConv2d(3, 8, 5, 2, 1).double()
    plain = torch.nn.Conv2d(3, 8, 5, 2, 1).double()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 17, 17, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), plain(xb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(ya, yb)
    pairs = ((ours.weight.grad, plain.weight.grad), (ours.bias.grad, plain.bias.grad), (xa.grad, xb.grad))
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_conv1_on_pixel_pairs_computes_the_plain_convolution():
    """A channels-last batch read as half as wide with twice the channels (a view) and the kernels folded to
    match: the same outputs and gradients as the plain conv1, at 224 (stride 4, padding 2) and on odd kernels."""
    from alexnet.models import conv

    torch.manual_seed(0)
    for args, side in (((3, 8, 11, 4, 2), 224), ((3, 4, 5, 2, 2), 30), ((2, 6, 3, 2, 0), 16)):
        ours = conv.TowerConv2d(*args).double()
        plain = torch.nn.Conv2d(*args).double()
        plain.load_state_dict(ours.state_dict())
        x = torch.randn(2, args[0], side, side, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        assert ours._folded(x) is not None
        assert conv.fold_width(x).data_ptr() == x.data_ptr()  # a view: no copy
        ya, yb = ours(x), plain(x)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.bias.grad, plain.bias.grad, rtol=1e-12, atol=1e-12)


def test_conv1_folds_only_where_the_geometry_and_layout_allow():
    from alexnet.models import conv

    paper = create_model("alexnet").conv1
    cl = torch.channels_last
    assert paper._folded(torch.zeros(1, 3, 224, 224).contiguous(memory_format=cl)) == ((4, 2), (2, 1))
    assert paper._folded(torch.zeros(1, 3, 224, 224)) is None  # the plain layout: the fold would copy
    assert paper._folded(torch.zeros(1, 3, 227, 227).contiguous(memory_format=cl)) is None  # odd width
    assert conv.TowerConv2d(3, 4, 3, 1, 1)._folded(torch.zeros(1, 3, 8, 8).contiguous(memory_format=cl)) is None
    reflect = conv.TowerConv2d(3, 4, 11, 4, 2, padding_mode="reflect")
    assert reflect._folded(torch.zeros(1, 3, 224, 224).contiguous(memory_format=cl)) is None
    x = torch.zeros(1, 3, 224, 224).contiguous(memory_format=cl).requires_grad_()
    assert paper._folded(x) is None  # the image's own gradient goes through the plain convolution


def test_bf16_autocast_training_step_of_the_paper_net():
    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and model.conv1.weight.grad.dtype == torch.float32
    assert torch.isfinite(model.conv1.weight.grad).all() and model.conv1.weight.grad.abs().sum() > 0


def test_the_paper_network_computes_the_same_on_channels_last_maps():
    """The layout is a speed choice only: forward and weight gradients agree with the plain layout."""
    torch.manual_seed(0)
    plain = create_model("alexnet", num_classes=10, init="kaiming")
    nhwc = create_model("alexnet", num_classes=10, init="kaiming").to(memory_format=torch.channels_last)
    nhwc.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 224, 224)
    outs = []
    for model, inp in ((plain, x), (nhwc, x.contiguous(memory_format=torch.channels_last))):
        model.eval()
        out = model(inp)
        out.square().sum().backward()
        outs.append((out, model.conv2.weight.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-3, atol=1e-4)


def test_channels_last_is_chosen_on_a_cpu_with_avx512(monkeypatch):
    from alexnet import info

    monkeypatch.setattr(info, "cpu_flags", lambda: ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"])
    assert info.channels_last_by_default(torch.device("cpu"), "bf16")
    assert info.channels_last_by_default(torch.device("cpu"), "fp32")
    assert not info.channels_last_by_default(torch.device("cuda"), "bf16")
    monkeypatch.setattr(info, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_bf16"])  # AMD Zen 4
    assert info.channels_last_by_default(torch.device("cpu"), "bf16")
    assert info.channels_last_by_default(torch.device("cpu"), "fp32")
    monkeypatch.setattr(info, "cpu_flags", lambda: ["avx2"])
    assert not info.channels_last_by_default(torch.device("cpu"), "bf16")
    assert not info.channels_last_by_default(torch.device("cpu"), "fp32")


def test_the_last_pooling_gets_its_gradient_channels_last(monkeypatch):
    """flatten's gradient is converted back to channels-last before the max-pool's backward (which would
    otherwise convert its input to the plain layout and back); the gradients are the same either way."""
    from alexnet.models import alexnet as module

    seen = []
    convert = module._as_channels_last

    def spy(grad):
        out = convert(grad)
        seen.append(out.is_contiguous(memory_format=torch.channels_last))
        return out

    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    grads = []
    for hooked in (True, False):
        model.zero_grad()
        if hooked:
            monkeypatch.setattr(module, "_as_channels_last", spy)
        else:
            monkeypatch.setattr(module, "_channels_last_only", lambda t: False)
        model.eval()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert seen == [True]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
