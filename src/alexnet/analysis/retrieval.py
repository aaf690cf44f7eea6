"""`alexnet retrieve`: Figure 4 (right), the training images nearest to a test image in fc7 space.

Section 6.1: "If two images produce feature activation vectors with a small Euclidean separation, we can
say that the higher levels of the neural network consider them to be similar", while "at the pixel level,
the retrieved training images are generally not close in L2 to the query images". This module finds the
k nearest training images by Euclidean distance (brute force, exact) and measures the observation over a
whole validation split: precision@k, the share of the k retrieved training images whose label is the
query's, for fc7 vectors and for raw pixels (each image averaged down to 32 x 32, the baseline).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from alexnet.analysis.features import compute_features, fc7, pixel_vectors
from alexnet.analysis.sections import analysis_dir, spread_over_classes, true_classes, write_section
from alexnet.data.decode import load_images
from alexnet.data.store import Store
from alexnet.distributed import resolve_device
from alexnet.engine import progress_bar
from alexnet.fsutil import atomic_write
from alexnet.models.build import TrainedNetwork, load_trained
from alexnet.paths import resolve_store

PIXEL_SIDE = 32


def nearest(
    index: np.ndarray, queries: np.ndarray | torch.Tensor, k: int, chunk: int = 8192, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of ``index`` (N, D) nearest to each query (Q, D) in Euclidean distance, exactly.

    Returns (distances (Q, k) float32, indices (Q, k) int64), nearest first; equal distances are ordered
    by index. ``index`` may be a float16 memory map: it is read ``chunk`` rows at a time as float32.
    """
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    k = min(k, len(index))
    q_sq = q.pow(2).sum(1, keepdim=True)
    best_d = torch.full((len(q), 0), float("inf"))
    best_i = torch.zeros((len(q), 0), dtype=torch.int64)
    bar = progress_bar(-(-len(index) // chunk), 0, "search", progress)
    for a in range(0, len(index), chunk):
        x = torch.from_numpy(np.asarray(index[a : a + chunk], dtype=np.float32))
        d = (q_sq + x.pow(2).sum(1)[None, :] - 2.0 * q @ x.T).clamp_min_(0.0)
        ids = torch.arange(a, a + len(x)).expand(len(q), -1)
        best_d, best_i = _merge(torch.cat([best_d, d], 1), torch.cat([best_i, ids], 1), k)
        bar.update(1)
    bar.close()
    return best_d.sqrt().numpy(), best_i.numpy()


def _merge(d: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Sort by (distance, index): a stable sort of index order by distance keeps ties deterministic.
    order = torch.argsort(ids, dim=1)
    d, ids = d.gather(1, order), ids.gather(1, order)
    order = torch.argsort(d, dim=1, stable=True)[:, :k]
    return d.gather(1, order), ids.gather(1, order)


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Mean over queries of the share of their retrieved labels (Q, k) equal to the query's label (Q,)."""
    return float((neighbour_labels == query_labels[:, None]).mean())


def chance_precision(index_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """The precision of retrieving training images at random: the mean share of the query's class."""
    counts = np.bincount(index_labels, minlength=int(max(index_labels.max(), query_labels.max())) + 1)
    return float(np.mean(counts[query_labels] / len(index_labels)))


def _query_images(trained: TrainedNetwork, st: Store, queries: list[str]) -> tuple[torch.Tensor, list[dict]]:
    """uint8 images (Q, 3, S, S) and a description of each query: an index into the eval split or a file."""
    split = st.eval_split
    images, labels, files = st.images(split), st.labels(split), st.files(split)
    out, info = [], []
    for q in queries:
        if q.isdigit():
            i = int(q)
            if i >= len(images):
                raise ValueError(f"query index {i} is outside the {split} split ({len(images)} images)")
            out.append(torch.from_numpy(np.ascontiguousarray(images[i])))
            info.append({"query": f"{split}[{i}]", "file": files[i], "label": int(labels[i])})
        else:
            out.append(load_images([q], st.size)[0])
            label = true_classes([q], list(st.classes))[0]
            info.append({"query": q, "file": q, "label": label})
    return torch.stack(out), info


def default_queries(st: Store, count: int = 5, seed: int = 0) -> list[str]:
    """`count` eval-split indices from classes spread over the label range."""
    return [str(i) for i in spread_over_classes(st.labels(st.eval_split), count, seed)]


def retrieve(
    checkpoint: str | os.PathLike,
    store: str | os.PathLike,
    queries: list[str] | None = None,
    k: int = 6,
    out: str | os.PathLike | None = None,
    precision: str = "fp32",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """The k nearest training images in fc7 space for each query (eval-split index or image file),
    drawn as Figure 4's right half; returns what was found, and writes retrieval.json beside the PNG."""
    st = Store.open(resolve_store(str(store)))
    dev = resolve_device(device)
    trained = load_trained(checkpoint, dev)
    feats = compute_features(checkpoint, st.root, st.train_split, precision=precision, device=device,
                             progress=progress, trained=trained)
    queries = queries or default_queries(st)
    images, info = _query_images(trained, st, queries)
    dist, idx = nearest(feats.vectors, fc7(trained, images, precision).cpu().numpy(), k)
    names = list(st.class_names)
    for q, d, i in zip(info, dist, idx, strict=True):
        q["name"] = names[q["label"]] if q["label"] is not None else None
        q["neighbours"] = [{"index": int(j), "file": feats.files[j], "label": int(feats.labels[j]),
                            "name": names[feats.labels[j]], "distance": float(e)} for j, e in zip(i, d, strict=True)]
    folder = analysis_dir(checkpoint)
    png = Path(out) if out is not None else folder / "retrieval.png"
    _draw(st, images, info, png)
    hits = [sum(n["label"] == q["label"] for n in q["neighbours"]) for q in info if q["label"] is not None]
    result = {"checkpoint": str(checkpoint), "store": str(st.root), "k": k, "queries": info, "figure": str(png),
              "features": str(feats.path)}
    write_section(
        folder, "retrieval", "Nearest training images in fc7 space (Figure 4, right)",
        f"Each row: a validation image (left) and the {k} training images whose fc7 vectors are nearest to its "
        f"own in Euclidean distance; a green frame marks a neighbour of the query's class. "
        f"{sum(hits)} of {k * len(hits)} neighbours share the query's class.",
        image=png if png.parent == folder else None,
        table={"columns": ["query", "class", "neighbours of its class", "nearest distance"],
               "rows": [[q["query"], q["name"] or "?", f"{sum(n['label'] == q['label'] for n in q['neighbours'])}"
                         f"/{k}", round(q["neighbours"][0]["distance"], 2)] for q in info]},
        **result)
    return result


def _draw(st: Store, queries: torch.Tensor, info: list[dict], out: Path) -> None:
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = st.images(st.train_split)
    k = len(info[0]["neighbours"])
    fig, axes = plt.subplots(len(info), k + 1, figsize=(1.6 * (k + 1), 1.8 * len(info)), squeeze=False)
    for r, q in enumerate(info):
        cells = [(queries[r].numpy(), f"query: {q['name'] or '?'}", None)]
        cells += [(train[n["index"]], f"{n['name']}\nd={n['distance']:.1f}",
                   None if q["label"] is None else n["label"] == q["label"]) for n in q["neighbours"]]
        for c, (img, title, same) in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(np.asarray(img).transpose(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
            colour = "black" if same is None else ("#2a9d2a" if same else "#d03030")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if same is not None else 1)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def evaluate_retrieval(
    checkpoint: str | os.PathLike,
    store: str | os.PathLike,
    k: int = 6,
    precision: str = "fp32",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Precision@1 and @k over the whole eval split against the train split, for fc7 vectors and for raw
    pixels (the paper's contrast); writes retrieval_eval.json in the analysis folder."""
    st = Store.open(resolve_store(str(store)))
    train = compute_features(checkpoint, st.root, st.train_split, precision=precision, device=device,
                             progress=progress)
    val = compute_features(checkpoint, st.root, st.eval_split, precision=precision, device=device,
                           progress=progress)
    pixels_train = pixel_vectors(st, st.train_split, PIXEL_SIDE, progress)
    pixels_val = pixel_vectors(st, st.eval_split, PIXEL_SIDE, progress)
    rows = [
        measure({"representation": name, "dimensions": int(index.shape[1])},
                lambda index=index, queries=queries: nearest(index, queries, k, progress=progress)[1],
                train.labels, val.labels, k, int(index.shape[1]) * value_bytes)
        for name, index, queries, value_bytes in (
            ("fc7", train.vectors, val.vectors, 2),
            (f"pixels {PIXEL_SIDE}x{PIXEL_SIDE}", pixels_train, pixels_val, 1),
        )
    ]
    chance = chance_precision(train.labels, val.labels)
    result = {"checkpoint": str(checkpoint), "store": str(st.root), "train_images": len(train.labels),
              "queries": len(val.labels), "k": k, "chance_precision": chance, "rows": rows}
    write_section(
        analysis_dir(checkpoint), "retrieval_eval", "Retrieval precision: fc7 vs raw pixels",
        f"Every {st.eval_split} image queries the {len(train.labels)} training images; precision@k is the share "
        f"of the k nearest (Euclidean) whose class is the query's (chance {100 * chance:.1f} %). Section 6.1 "
        "says neighbours in fc7 space share the query's class while neighbours in pixel space do not.",
        table=_table(rows, k), **result)
    return result


def measure(identity: dict, search: Callable[[], np.ndarray], index_labels: np.ndarray, query_labels: np.ndarray,
            k: int, bytes_per_image: int) -> dict:
    """Time `search()` (the (Q, k) indices it retrieves for the queries) and score it: `identity` with
    bytes_per_image, precision_at_1, precision_at_K and queries_per_s."""
    start = time.perf_counter()
    idx = search()
    seconds = time.perf_counter() - start
    found = index_labels[idx]
    return {**identity, "bytes_per_image": int(bytes_per_image),
            "precision_at_1": precision_at_k(found[:, :1], query_labels),
            f"precision_at_{k}": precision_at_k(found, query_labels),
            "queries_per_s": len(query_labels) / max(seconds, 1e-9)}


def _table(rows: list[dict], k: int) -> dict:
    return {"columns": ["representation", "dimensions", "bytes / image", "precision@1", f"precision@{k}",
                        "queries / s"],
            "rows": [[r["representation"], r["dimensions"], r["bytes_per_image"],
                      f"{100 * r['precision_at_1']:.1f} %", f"{100 * r[f'precision_at_{k}']:.1f} %",
                      round(r["queries_per_s"])] for r in rows]}


def format_retrieval(result: dict) -> str:
    lines = []
    for q in result["queries"]:
        lines.append(f"{q['query']} ({q['name'] or 'class unknown'}):")
        lines.extend(f"  {n['distance']:8.2f}  {n['name']:<20} {n['file']}" for n in q["neighbours"])
    lines.append(f"figure: {result['figure']}")
    return "\n".join(lines)


def format_evaluation(result: dict) -> str:
    k = result["k"]
    lines = [f"{result['queries']} queries against {result['train_images']} training images "
             f"(chance precision {100 * result['chance_precision']:.1f} %):"]
    for r in result["rows"]:
        lines.append(f"  {r['representation']:<14} {r['dimensions']:>6}-d  {r['bytes_per_image']:>6} B/image  "
                     f"precision@1 {100 * r['precision_at_1']:5.1f} %  precision@{k} "
                     f"{100 * r[f'precision_at_{k}']:5.1f} %  {r['queries_per_s']:,.0f} queries/s")
    return "\n".join(lines)
