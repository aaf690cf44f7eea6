"""Model names: the paper's net, each ablation of Sections 3-4 as a configuration of it, and the rest.

``create_model(name, num_classes, **overrides)`` builds one; overrides are fields of the model's
configuration (``input_size``, ``init``, ``dropout``, ``activation``, ...), so an ablation on top of an
ablation is one call: ``create_model("alexnet_nolrn", init="kaiming")``.

Two overrides every model takes choose between the paper as printed and the code that trained it:
``dropout_form`` ("paper", "inverted"; `alexnet.models.dropout`) and ``lrn_alpha`` ("over-n": the sum of
squares times alpha / n, as cuda-convnet computed it; "printed": times alpha; `alexnet.models.lrn`). "auto",
their default, is the model's own: the paper's dropout and alpha / n for the paper's network and the CIFAR
nets, inverted dropout for alexnet_owt and alexnet_caffe (as torchvision and Caffe trained them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from torch import nn

from alexnet.models.alexnet import AlexNet, AlexNetConfig, ConvSpec, paper_convs
from alexnet.models.dropout import DROPOUT_FORMS
from alexnet.models.lrn import LRNParams
from alexnet.models.owt import AlexNetOWT
from alexnet.models.small import CIFAR_LRN, CONVLOCAL_LRN, CUDA_CONVNET_19PCT_INIT, CifarNet, ConvLocalNet

LRN_ALPHAS = ("auto", "over-n", "printed")
DROPOUT_FORM_CHOICES = ("auto", *DROPOUT_FORMS)


def _halve_towers(input_size: int) -> tuple[ConvSpec, ...]:
    # Section 4's one-GPU net: half the kernels in conv1-conv4, conv5 at full width (footnote 3), no towers.
    return tuple(
        replace(s, out_channels=s.out_channels if s.name == "conv5" else s.out_channels // 2, groups=1)
        for s in paper_convs(input_size)
    )


# Caffe's LRN layer computes x / (k + alpha / n * sum x^2) ^ beta, k = 1 by default; bvlc_alexnet's norm1 and
# norm2 set n = 5, alpha = 1e-4, beta = 0.75.
CAFFE_LRN = LRNParams(size=5, alpha=1e-4, beta=0.75, k=1.0, divide_by_size=True)

# name -> (description, function of input_size returning the changes to AlexNetConfig's defaults)
_PAPER_VARIANTS: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "alexnet": ("the paper's network (Section 3, Figure 2)", lambda n: {}),
    "alexnet_tanh": ("tanh instead of ReLU everywhere (Section 3.1)", lambda n: {"activation": "tanh"}),
    "alexnet_nolrn": ("no response normalisation (Section 3.3: +1.4 top-1)", lambda n: {"lrn": False}),
    "alexnet_nonoverlap": (
        "non-overlapping pooling z = s = 2 (Section 3.4: +0.4 top-1); maps are still 27, 13, 6",
        lambda n: {"pool_kernel": 2, "pool_stride": 2},
    ),
    "alexnet_onetower": (
        "the one-GPU comparison net: half the kernels in conv1-conv4, conv5 and FC full width, no towers",
        lambda n: {"convs": _halve_towers(n), "towers": 1},
    ),
    "alexnet_notowers": (
        "the paper's widths with every layer seeing every map (no grouping)",
        lambda n: {"convs": tuple(replace(s, groups=1) for s in paper_convs(n)), "towers": 1},
    ),
    "alexnet_shallow": (
        "conv4 removed, one middle conv layer (Section 7: about +2 top-1)",
        lambda n: {"convs": tuple(s for s in paper_convs(n) if s.name != "conv4")},
    ),
    "alexnet_nodropout": ("no dropout (Section 4.2: substantial overfitting)", lambda n: {"dropout": 0.0}),
    "alexnet_6conv": (
        "an extra conv6 over pool5 (the '1 CNN*' rows): 256 3x3 kernels, padding 1, per tower, bias 1",
        lambda n: {"extra_conv": ConvSpec("conv6", 256, 3, padding=1, groups=2, bias=1.0)},
    ),
    "alexnet_caffe": (
        "Caffe's bvlc_alexnet (alexnet import-caffe): the paper's net with Caffe's LRN (alpha/n, k = 1) "
        "across both towers and inverted dropout; Caffe's own input is 227",
        lambda n: {"lrn_params": CAFFE_LRN, "lrn_across_towers": True, "dropout_form": "inverted"},
    ),
}

# cuda-convnet's layers-19pct.cfg (alexnet.models.small): the Figure 1 experiment's net
_FIG1 = {"pools": ("max", "avg", "avg"), "pool_ceil": True, "init_std": CUDA_CONVNET_19PCT_INIT}

# name -> (description, builder, the LRN constants `lrn_alpha` re-reads; None: the model has no LRN)
_OTHER: dict[str, tuple[str, Callable[..., nn.Module], LRNParams | None]] = {
    "alexnet_owt": ("torchvision's single-tower AlexNet, torchvision's keys (loads its weights)", AlexNetOWT,
                    None),
    "cifar_relu": ("four-layer CIFAR-10 net with ReLU (Figure 1)", lambda **kw: CifarNet(**kw), None),
    "cifar_tanh": ("four-layer CIFAR-10 net with tanh (Figure 1)",
                   lambda **kw: CifarNet(**{"activation": "tanh", **kw}), None),
    "cifar_lrn": ("four-layer CIFAR-10 net with ReLU and LRN (Section 3.3)",
                  lambda **kw: CifarNet(**{"lrn": True, **kw}), CIFAR_LRN),
    "cifar_fig1_relu": ("Figure 1's net as cuda-convnet's layers-19pct.cfg: max, avg, avg pooling, its init, ReLU",
                        lambda **kw: CifarNet(**{**_FIG1, **kw}), None),
    "cifar_fig1_tanh": ("Figure 1's net as cuda-convnet's layers-19pct.cfg with tanh",
                        lambda **kw: CifarNet(**{**_FIG1, "activation": "tanh", **kw}), None),
    "cifar_convlocal_lrn": ("Section 3.3's CIFAR-10 net with LRN: cuda-convnet's layers-conv-local-11pct.cfg "
                            "(2 conv, 2 locally connected, fc10; cross-map LRN; 24x24 crops)",
                            lambda **kw: ConvLocalNet(**{"lrn": True, **kw}), CONVLOCAL_LRN),
    "cifar_convlocal": ("the same conv-local net without its two LRN layers (Section 3.3's 'without')",
                        lambda **kw: ConvLocalNet(**{"lrn": False, **kw}), None),
}
_INPUT_SIZES = {"cifar_convlocal_lrn": 24, "cifar_convlocal": 24}  # CIFAR nets not listed take 32

_ALEXNET_FIELDS = ({f.name for f in dataclasses.fields(AlexNetConfig)} - {"num_classes", "convs"}) | {"lrn_alpha"}


def _readings(overrides: dict[str, Any]) -> tuple[str, str]:
    """Pop ``lrn_alpha`` and ``dropout_form`` from `overrides` and check them ("auto" when absent)."""
    lrn_alpha = overrides.pop("lrn_alpha", "auto")
    form = overrides.pop("dropout_form", "auto")
    if lrn_alpha not in LRN_ALPHAS:
        raise ValueError(f"lrn_alpha {lrn_alpha!r}: expected one of {', '.join(LRN_ALPHAS)}")
    if form not in DROPOUT_FORM_CHOICES:
        raise ValueError(f"dropout_form {form!r}: expected one of {', '.join(DROPOUT_FORM_CHOICES)}")
    return lrn_alpha, form


def _reread(params: LRNParams, lrn_alpha: str) -> LRNParams:
    return params if lrn_alpha == "auto" else dataclasses.replace(params, divide_by_size=lrn_alpha == "over-n")


def list_models() -> list[str]:
    """Every registered model name."""
    return [*_PAPER_VARIANTS, *_OTHER]


def model_config(name: str, num_classes: int = 1000, **overrides: Any) -> AlexNetConfig:
    """The AlexNetConfig of a paper-family model name, with overrides applied."""
    _check(name)
    if name not in _PAPER_VARIANTS:
        raise ValueError(f"model {name!r} is not one of the paper's configurations")
    unknown = set(overrides) - _ALEXNET_FIELDS
    if unknown:
        valid = ", ".join(sorted(_ALEXNET_FIELDS))
        raise ValueError(f"unknown override(s) {sorted(unknown)} for {name}; valid: {valid}")
    overrides = dict(overrides)
    lrn_alpha, form = _readings(overrides)
    input_size = overrides.pop("input_size", 224)
    base = AlexNetConfig(num_classes=num_classes, input_size=input_size, convs=paper_convs(input_size))
    # The change that defines a variant wins over an override of the same field: the config always passes
    # model.dropout (0.5 by default), which must not turn alexnet_nodropout back into the full network.
    # The two readings are choices within any variant: set (not "auto"), they win.
    config = replace(base, **{**overrides, **_PAPER_VARIANTS[name][1](input_size)})
    if form != "auto":
        config = replace(config, dropout_form=form)
    return replace(config, lrn_params=_reread(config.lrn_params, lrn_alpha))


def create_model(name: str, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: size of the last layer.
        **overrides: for the paper family, AlexNetConfig fields (input_size, init, dropout, activation, lrn,
            ...); for alexnet_owt, ``dropout`` (and ``input_size``, ignored: its adaptive pooling takes any);
            for the CIFAR nets, ``activation``, ``lrn``, ``dropout`` (``input_size`` must be 32, 24 for
            the conv-local nets); for every model ``dropout_form`` and ``lrn_alpha`` (module docstring;
            a model without LRN has no alpha to read).
    """
    _check(name)
    if name in _PAPER_VARIANTS:
        return AlexNet(model_config(name, num_classes, **overrides))
    lrn_alpha, form = _readings(overrides)
    _, build, lrn_params = _OTHER[name]
    if form != "auto":
        overrides["dropout_form"] = form
    if lrn_params is not None and lrn_alpha != "auto":
        overrides["lrn_params"] = _reread(lrn_params, lrn_alpha)
    input_size = overrides.pop("input_size", None)
    size = _INPUT_SIZES.get(name, 32)
    if name.startswith("cifar") and input_size not in (None, size):
        raise ValueError(f"{name} takes {size}x{size} images, not input_size={input_size}")
    if name in _INPUT_SIZES:
        overrides["input_size"] = size
    try:
        return build(num_classes=num_classes, **overrides)
    except TypeError as err:
        raise ValueError(f"bad override for {name}: {err}") from err


def _check(name: str) -> None:
    if name not in _PAPER_VARIANTS and name not in _OTHER:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
