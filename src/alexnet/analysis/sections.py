"""Where a checkpoint's analyses go, and the one file format they share with `alexnet report`.

Each analysis (kernels, predictions, retrieval, codes) writes ``NAME.json`` (and usually ``NAME.png``)
into the analysis folder of the checkpoint's run: ``RUN_DIR/analysis/`` for a checkpoint inside a run
folder (``RUN_DIR/checkpoints/best.pt``), else ``STEM.analysis/`` beside the file (an exported or
imported ``.safetensors``). The JSON is an object with

* ``title``: a heading;
* ``summary``: a paragraph saying what was measured and what it shows;
* ``image`` (optional): a PNG's file name in the same folder;
* ``table`` (optional): ``{"columns": [...], "rows": [[...], ...]}``;

and any other keys (the full numbers), which the report ignores. Beside that, what more than one analysis
needs of a data set: images spread over its classes, and the class an image file's folder names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alexnet.fsutil import write_json
from alexnet.rundir import RunPaths


def analysis_dir(checkpoint: str | os.PathLike) -> Path:
    """The folder a checkpoint's analyses are written to (created)."""
    path = Path(checkpoint)
    run = path.parent.parent
    if path.parent.name == RunPaths(run).checkpoints.name and RunPaths(run).config.is_file():
        folder = run / "analysis"
    else:
        folder = path.with_name(f"{path.stem}.analysis")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_section(
    folder: str | os.PathLike,
    name: str,
    title: str,
    summary: str,
    image: str | os.PathLike | None = None,
    table: dict | None = None,
    **details: object,
) -> Path:
    """Write ``folder/NAME.json`` in the shared format; returns its path."""
    doc: dict = {"title": title, "summary": summary}
    if image is not None:
        doc["image"] = Path(image).name
    if table is not None:
        doc["table"] = table
    doc.update(details)
    out = Path(folder) / f"{name}.json"
    write_json(out, doc)
    return out


def spread_over_classes(labels: np.ndarray, count: int, seed: int = 0) -> list[int]:
    """`count` indices of a split, one from each of `count` classes spread evenly over the label range
    (with fewer classes, some classes give more than one), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked = classes[np.linspace(0, len(classes) - 1, count).round().astype(int)]
    chosen: list[int] = []
    for c in picked:
        pool = np.setdiff1d(np.flatnonzero(labels == c), chosen)
        if len(pool):
            chosen.append(int(rng.choice(pool)))
    return chosen


def true_classes(images: list[str | os.PathLike], classes: list[str]) -> list[int | None]:
    """The class index of each image file whose folder is named after one of `classes` (a data set's
    ``val/n01440764/x.JPEG``), else None."""
    lookup = {c: i for i, c in enumerate(classes)}
    return [lookup.get(Path(p).parent.name) for p in images]
