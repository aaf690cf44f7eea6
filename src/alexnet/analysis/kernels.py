"""Figure 3: the first layer's kernels as an image grid, one block per tower, and how colour-specific
each tower's kernels are.

Section 6.1 observes that "the kernels on GPU 1 are largely color-agnostic, while the kernels on GPU 2 are
largely color-specific". To check that on any trained network this module measures, for each kernel w
(3 x k x k), the share of its energy outside the grey axis of RGB:

    colour share = || w - mean_rgb(w) ||^2 / || w ||^2

where mean_rgb(w) is the kernel's average over its three colour channels, copied into all three. A
kernel that sees only luminance (equal weights in R, G and B at every position) has share 0; one that
responds to colour differences has share near 1. Random weights have 2/3 in expectation (two of the three
dimensions of RGB are orthogonal to grey), the reference against which training moves the towers.

Display: the paper does not say how its kernels were scaled; each kernel here is scaled on its own to
0..1 (its minimum to black, its maximum to white, the same affine map for the three channels), so that
a kernel's colour and pattern show whatever its norm.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.analysis.sections import analysis_dir, write_section
from alexnet.fsutil import atomic_write
from alexnet.models.build import TrainedNetwork, load_trained

RANDOM_COLOUR_SHARE = 2 / 3


def first_layer(model: nn.Module) -> torch.Tensor:
    """The weights (K, 3, k, k) of the first convolution over the RGB image."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module.weight.detach().float().cpu()
    raise ValueError(f"{type(model).__name__} has no convolution over a 3-channel image")


def towers_of(model: nn.Module) -> int:
    """How many towers the first layer's kernels are split into (2 for the paper's net, else 1)."""
    config = getattr(model, "config", None)
    return int(getattr(config, "towers", 1))


def colour_share(weights: torch.Tensor) -> torch.Tensor:
    """Per kernel of (K, 3, k, k): the share of its energy outside the grey axis of RGB (see the module)."""
    w = weights.double()
    grey = w.mean(dim=1, keepdim=True)
    total = w.pow(2).sum(dim=(1, 2, 3))
    return ((w - grey).pow(2).sum(dim=(1, 2, 3)) / total.clamp_min(1e-30)).float()


def describe(trained: TrainedNetwork) -> dict:
    """Per tower: kernel indices and the mean, median and per-kernel colour shares."""
    weights = first_layer(trained.model)
    towers = towers_of(trained.model)
    share = colour_share(weights)
    per = weights.shape[0] // towers
    blocks = []
    for t in range(towers):
        s = share[t * per:(t + 1) * per]
        blocks.append({"tower": t + 1, "kernels": [t * per, (t + 1) * per], "mean_colour_share": float(s.mean()),
                       "median_colour_share": float(s.median()), "colour_share": [round(float(v), 4) for v in s]})
    return {"checkpoint": str(trained.path), "model": trained.config.model.name, "shape": list(weights.shape),
            "random_colour_share": RANDOM_COLOUR_SHARE, "towers": blocks}


def _display(kernel: torch.Tensor) -> np.ndarray:
    """(3, k, k) -> (k, k, 3) in 0..1, the kernel's own range stretched to black..white."""
    k = kernel.numpy().transpose(1, 2, 0)
    lo, hi = k.min(), k.max()
    return (k - lo) / (hi - lo) if hi > lo else np.full_like(k, 0.5)


def draw(trained: TrainedNetwork, out: str | os.PathLike, columns: int = 8) -> Path:
    """The kernel grid as a PNG: one block per tower, its mean colour share in the block's title."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = first_layer(trained.model)
    info = describe(trained)
    towers = len(info["towers"])
    per = weights.shape[0] // towers
    rows = -(-per // columns)
    fig = plt.figure(figsize=(columns * 0.6 + 0.4, towers * (rows * 0.6 + 0.5)))
    grid = fig.add_gridspec(towers, 1, hspace=0.12)
    for t, block in enumerate(info["towers"]):
        sub = grid[t].subgridspec(rows, columns, wspace=0.08, hspace=0.08)
        for i in range(per):
            ax = fig.add_subplot(sub[i // columns, i % columns])
            ax.imshow(_display(weights[t * per + i]), interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(f"tower {t + 1}: mean colour share {block['mean_colour_share']:.2f} "
                             f"(random {RANDOM_COLOUR_SHARE:.2f})", loc="left", fontsize=9)
    out = Path(out)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return out


def format_description(info: dict) -> str:
    lines = [f"{info['checkpoint']} ({info['model']}): first layer {'x'.join(map(str, info['shape']))}"]
    for b in info["towers"]:
        lines.append(f"  tower {b['tower']} (kernels {b['kernels'][0]}-{b['kernels'][1] - 1}): mean colour share "
                     f"{b['mean_colour_share']:.3f}, median {b['median_colour_share']:.3f}")
    lines.append(f"  (0 = grey only, 1 = colour only; random weights {RANDOM_COLOUR_SHARE:.3f})")
    return "\n".join(lines)


def write_kernels(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Figure 3 for a checkpoint: the PNG (default: the analysis folder's kernels.png), the measure, and the
    analysis section kernels.json beside the PNG; returns the description with the figure's path."""
    trained = load_trained(checkpoint)
    png = Path(out) if out is not None else analysis_dir(checkpoint) / "kernels.png"
    info = {**describe(trained), "image": str(draw(trained, png))}
    text = format_description(info)
    towers = ", ".join(f"tower {b['tower']} {b['mean_colour_share']:.3f}" for b in info["towers"])
    write_section(
        png.parent, png.stem, "First-layer kernels (Figure 3)",
        f"The {info['shape'][0]} conv1 kernels, each scaled to its own range, one block per tower. Mean colour "
        f"share (energy outside RGB's grey axis; 0 = grey only, 1 = colour only, random weights "
        f"{RANDOM_COLOUR_SHARE:.3f}): {towers}. The paper saw one tower largely colour-agnostic and the other "
        "colour-specific.",
        image=png, **{k: v for k, v in info.items() if k != "image"})
    return {**info, "text": f"{text}\n  figure: {info['image']}"}
