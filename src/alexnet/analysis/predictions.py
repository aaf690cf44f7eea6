"""`alexnet predict --figure`: Figure 4 (left), images with their five most probable classes as bars.

Each cell shows an image (scaled and centre-cropped as the network saw it) with a bar per predicted
class, its probability as the bar's length. When the true class is known (the image's folder is named
after one of the network's classes, as in a prepared data set's layout ``val/n01440764/x.JPEG``), its
name is written under the image and its bar, if it is among the five, is drawn in red, as in the paper.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from alexnet.analysis.sections import analysis_dir, spread_over_classes, true_classes, write_section
from alexnet.data.decode import load_images
from alexnet.data.store import Store
from alexnet.evaluate import ensemble_probs, top_classes
from alexnet.fsutil import atomic_write
from alexnet.models.build import TrainedNetwork, load_trained
from alexnet.paths import resolve_store


def draw_predictions(
    results: list[dict], pixels: torch.Tensor, truth: list[int | None], classes: list[str], names: list[str],
    out: str | os.PathLike, columns: int = 4,
) -> Path:
    """The grid: ``results`` from `alexnet.evaluate.predict_files`, ``pixels`` uint8 (N, 3, H, W) of the same
    images, ``truth`` the class index of each or None, ``classes`` / ``names`` the network's."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    columns = min(columns, n)
    rows = -(-n // columns)
    fig = plt.figure(figsize=(2.4 * columns, 3.7 * rows))
    grid = fig.add_gridspec(rows * 2, columns, height_ratios=[2.2, 1.1] * rows, hspace=0.12, wspace=0.1)
    for i, (result, image, label) in enumerate(zip(results, pixels, truth, strict=True)):
        r, c = divmod(i, columns)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(image.numpy().transpose(1, 2, 0))
        ax.set_xticks([])
        ax.set_yticks([])
        name = f"true: {_short(names[label])}" if label is not None else _short(Path(result["image"]).name, 28)
        ax.set_title(name, fontsize=8)
        bars = fig.add_subplot(grid[2 * r + 1, c])
        preds = result["predictions"]
        probs = np.array([p["probability"] for p in preds])
        colours = ["#d03030" if label is not None and classes[label] == p["class"] else "#4a7fb5" for p in preds]
        y = np.arange(len(preds))[::-1]
        bars.barh(y, probs, color=colours, alpha=0.45, height=0.8)
        for yy, p in zip(y, preds, strict=True):  # the names on the bars, as in the paper's figure
            bars.text(0.02, yy, f"{_short(p['name'], 26)}  {100 * p['probability']:.0f}%", va="center",
                      fontsize=7)
        bars.set_xlim(0, 1)
        bars.set_yticks([])
        bars.set_xticks([])  # the percentages are written on the bars
        for spine in ("top", "right", "left"):
            bars.spines[spine].set_visible(False)
    out = Path(out)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=90, bbox_inches="tight"))
    plt.close(fig)
    return out


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def summarise(results: list[dict], truth: list[int | None], classes: list[str]) -> dict:
    """How many images had their true class first, and among the five (only images with a known class)."""
    known = [(r, classes[t]) for r, t in zip(results, truth, strict=True) if t is not None]
    top1 = sum(r["predictions"][0]["class"] == c for r, c in known)
    top5 = sum(any(p["class"] == c for p in r["predictions"]) for r, c in known)
    return {"images": len(results), "with_true_class": len(known), "top1_correct": top1, "top5_correct": top5}


def predict_figure(
    checkpoints: list[str | os.PathLike], images: list[str | os.PathLike], out: str | os.PathLike,
    results: list[dict], ten_crop: bool = False, columns: int = 4,
) -> dict:
    """Draw `results` (of `predict_files` on `images`) to `out`, and write the analysis section beside it
    (``OUT_STEM.json``, read by `alexnet report` when `out` is in the run's analysis folder)."""
    trained = load_trained(checkpoints[0])
    pixels = load_images(images, trained.mean.shape[-1])
    truth = true_classes(images, trained.classes)
    return _figure_and_section(trained, checkpoints, images, pixels, truth, results, out, ten_crop, columns)


def store_predictions(
    checkpoint: str | os.PathLike, store: str | os.PathLike, out: str | os.PathLike | None = None, count: int = 8,
    top: int = 5, seed: int = 0,
) -> dict:
    """Figure 4 (left) from `count` validation images of a prepared store, classes spread over the labels
    (what `alexnet demo` draws at its end); default `out`: the analysis folder's predictions.png."""
    st = Store.open(resolve_store(str(store)))
    split = st.eval_split
    trained = load_trained(checkpoint)
    labels = st.labels(split)
    indices = spread_over_classes(labels, count, seed)
    pixels = torch.from_numpy(st.images(split)[np.array(indices)])
    probs, _ = ensemble_probs([trained], [(pixels, torch.zeros(len(indices), dtype=torch.int64))],
                              torch.device("cpu"))
    files = st.files(split)
    results = [{"image": f"{split}[{i}] {files[i]}", "predictions": top_classes(p, trained, top)}
               for i, p in zip(indices, probs, strict=True)]
    truth = [int(labels[i]) for i in indices]
    if list(st.classes) != trained.classes:
        truth = [trained.classes.index(st.classes[t]) if st.classes[t] in trained.classes else None for t in truth]
    out = Path(out) if out is not None else analysis_dir(checkpoint) / "predictions.png"
    return _figure_and_section(trained, [checkpoint], [r["image"] for r in results], pixels, truth, results, out)


def _figure_and_section(
    trained: TrainedNetwork, checkpoints: list, images: list, pixels: torch.Tensor, truth: list[int | None],
    results: list[dict], out: str | os.PathLike, ten_crop: bool = False, columns: int = 4,
) -> dict:
    size, crop = pixels.shape[-1], trained.config.data.crop
    a = (size - crop) // 2
    pixels = pixels[:, :, a : a + crop, a : a + crop]
    out = draw_predictions(results, pixels, truth, trained.classes, trained.class_names, out, columns)
    counts = summarise(results, truth, trained.classes)
    known = counts["with_true_class"]
    said = (f" Of the {known} images whose folder names their class, {counts['top1_correct']} have it first and "
            f"{counts['top5_correct']} among the five (red bars)." if known else "")
    write_section(
        out.parent, out.stem, "Top-5 predictions (Figure 4, left)",
        f"{len(images)} images, each with the network's five most probable classes "
        f"({'ensemble of ' + str(len(checkpoints)) if len(checkpoints) > 1 else 'one network'}, "
        f"{'ten crops' if ten_crop else 'centre crop'})."
        + said,
        image=out, checkpoints=[str(c) for c in checkpoints], predictions=results, **counts)
    return {"figure": str(out), **counts}
