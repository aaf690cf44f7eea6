"""`alexnet codes`: the short binary codes Section 6.1 proposes for fast retrieval.

The paper: "Computing similarity by using Euclidean distance between two 4096-dimensional, real-valued
vectors is inefficient, but it could be made efficient by training an auto-encoder to compress these
vectors to short binary codes" (the method of Krizhevsky and Hinton, 2011). Here:

* The auto-encoder: 4096 -> 1024 -> B -> 1024 -> 4096, ReLU hidden layers, a logistic code layer,
  trained to reconstruct the training split's fc7 vectors (divided by their mean norm, so the loss does
  not depend on the network's activation scale) with mean squared error and Adam. As in semantic
  hashing, Gaussian noise (standard deviation 4) is added to the code layer's input during training, so
  that only codes far from 0.5, i.e. binary ones, carry information through the noise.
* A code is the sign of the code layer's input (the logistic above 0.5), B bits packed 8 to a byte.
* Search: Hamming distance (popcount of XOR) to every training code, exact; ties by index.

Codes of B = 32, 64, 128 and 256 bits are compared with Euclidean search on the float16 fc7 vectors and on
raw pixels by precision@k over the validation split, bytes per image and queries per second.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.analysis.features import compute_features, pixel_vectors
from alexnet.analysis.retrieval import PIXEL_SIDE, nearest, precision_at_k
from alexnet.analysis.sections import analysis_dir, write_section
from alexnet.checkpoint import load_weights, save_weights
from alexnet.data.store import Store
from alexnet.engine import progress_bar
from alexnet.errors import CheckpointError
from alexnet.fsutil import atomic_write
from alexnet.paths import resolve_store
from alexnet.seeding import seed_int

BITS = (32, 64, 128, 256)
HIDDEN = 1024
CODE_NOISE = 4.0


class CodeAutoencoder(nn.Module):
    """fc7 vector -> B logistic code units -> reconstruction (see the module docstring)."""

    def __init__(self, dim: int, bits: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.bits = bits
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bits))
        self.decoder = nn.Sequential(nn.Linear(bits, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.encoder(x)
        if noise:
            z = z + noise * torch.randn(z.shape, generator=generator, device=z.device)
        return self.decoder(torch.sigmoid(z))

    @torch.no_grad()
    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes (N, B) bool."""
        return self.encoder(x) > 0


def pack_bits(bits: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, B) booleans -> (N, ceil(B / 8)) uint8, first bit in the high bit of the first byte."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1)


def unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `pack_bits`."""
    return np.unpackbits(packed, axis=1, count=bits).astype(bool)


def _as_words(packed: np.ndarray) -> np.ndarray:
    # Whole 64-bit (or 32-bit) words make the XOR and popcount a few instructions per code.
    width = packed.shape[1]
    dtype = np.uint64 if width % 8 == 0 else np.uint32 if width % 4 == 0 else np.uint8
    return np.ascontiguousarray(packed).view(dtype)


def hamming_nearest(index: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The k packed codes of ``index`` (N, W) nearest to each packed query (Q, W) in Hamming distance,
    exactly. Returns (distances (Q, k) int, indices (Q, k)), nearest first, ties ordered by index."""
    db, qs = _as_words(index), _as_words(queries)
    k = min(k, len(db))
    n = len(db)
    dist = np.empty((len(qs), k), dtype=np.int64)
    idx = np.empty((len(qs), k), dtype=np.int64)
    ids = np.arange(n, dtype=np.int64)
    for a in range(0, len(qs), chunk):
        d = np.bitwise_count(qs[a : a + chunk, None, :] ^ db[None, :, :]).sum(axis=2, dtype=np.int64)
        key = d * n + ids[None, :]  # unique: (distance, index) order
        part = np.argpartition(key, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(ids, key.shape)
        order = np.take_along_axis(key, part, axis=1).argsort(axis=1)
        chosen = np.take_along_axis(part, order, axis=1)
        idx[a : a + chunk] = chosen
        dist[a : a + chunk] = np.take_along_axis(d, chosen, axis=1)
    return dist, idx


def _scale(vectors: np.ndarray) -> float:
    sample = np.asarray(vectors[:: max(1, len(vectors) // 2048)], dtype=np.float32)
    return float(np.linalg.norm(sample, axis=1).mean()) or 1.0


def train_autoencoder(
    vectors: np.ndarray,
    bits: int,
    epochs: int = 15,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[CodeAutoencoder, float, list[float]]:
    """Fit one auto-encoder to (N, D) vectors; returns (model, input scale, mean loss per epoch)."""
    torch.manual_seed(seed_int(seed, 1, bits))  # the weights
    scale = _scale(vectors)
    data = torch.from_numpy(np.asarray(vectors, dtype=np.float32)) / scale
    model = CodeAutoencoder(data.shape[1], bits)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed_int(seed, 2, bits))  # batches and code noise
    steps = -(-len(data) // batch_size)
    bar = progress_bar(epochs * steps, 0, f"auto-encoder {bits} bits", progress)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for s in range(steps):
            x = data[order[s * batch_size : (s + 1) * batch_size]]
            loss = nn.functional.mse_loss(model(x, CODE_NOISE, gen), x) * x.shape[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss) * len(x)
            bar.update(1)
        losses.append(total / len(data))
    bar.close()
    return model.eval(), scale, losses


def encode(model: CodeAutoencoder, scale: float, vectors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Packed codes (N, B/8) uint8 of (N, D) vectors."""
    out = []
    for a in range(0, len(vectors), chunk):
        x = torch.from_numpy(np.asarray(vectors[a : a + chunk], dtype=np.float32)) / scale
        out.append(pack_bits(model.code(x).numpy()))
    return np.concatenate(out) if out else np.zeros((0, -(-model.bits // 8)), dtype=np.uint8)


def _model_path(folder: Path, bits: int) -> Path:
    return folder / f"codes-{bits}.safetensors"


def save_autoencoder(model: CodeAutoencoder, scale: float, path: Path, **meta: object) -> None:
    save_weights(model.state_dict(), path, {"bits": str(model.bits), "scale": repr(scale),
                                            **{k: json.dumps(v) for k, v in meta.items()}})


def load_autoencoder(path: Path) -> tuple[CodeAutoencoder, float, dict]:
    state, meta = load_weights(path)
    if "bits" not in meta:
        raise CheckpointError(f"{path} is not an auto-encoder written by `alexnet codes train`")
    model = CodeAutoencoder(state["encoder.0.weight"].shape[1], int(meta["bits"]), state["encoder.0.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval(), float(meta["scale"]), meta


def train_codes(
    checkpoint: str | os.PathLike,
    store: str | os.PathLike,
    bits: tuple[int, ...] = BITS,
    epochs: int = 15,
    seed: int = 0,
    precision: str = "fp32",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Train one auto-encoder per code length on the train split's fc7 vectors; saved in the analysis
    folder as codes-B.safetensors."""
    st = Store.open(resolve_store(str(store)))
    train = compute_features(checkpoint, st.root, st.train_split, precision=precision, device=device,
                             progress=progress)
    folder = analysis_dir(checkpoint)
    trained = []
    for b in bits:
        start = time.perf_counter()
        model, scale, losses = train_autoencoder(train.vectors, b, epochs=epochs, seed=seed, progress=progress)
        path = _model_path(folder, b)
        save_autoencoder(model, scale, path, checkpoint_sha256=train.checkpoint_sha256, epochs=epochs, seed=seed,
                         losses=losses)
        trained.append({"bits": b, "path": str(path), "final_loss": losses[-1], "seconds": time.perf_counter() - start})
    return {"checkpoint": str(checkpoint), "store": str(st.root), "train_images": len(train.labels),
            "epochs": epochs, "models": trained}


def evaluate_codes(
    checkpoint: str | os.PathLike,
    store: str | os.PathLike,
    bits: tuple[int, ...] = BITS,
    k: int = 6,
    precision: str = "fp32",
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Precision@1 and @k over the eval split for each trained code length, fc7 and pixels; bytes per
    image and queries per second; codes.json and codes.png in the analysis folder."""
    st = Store.open(resolve_store(str(store)))
    train = compute_features(checkpoint, st.root, st.train_split, precision=precision, device=device,
                             progress=progress)
    val = compute_features(checkpoint, st.root, st.eval_split, precision=precision, device=device,
                           progress=progress)
    folder = analysis_dir(checkpoint)
    rows = []
    for b in bits:
        path = _model_path(folder, b)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: train it first with `alexnet codes train {checkpoint} "
                                    f"--data {store} --bits {b}`")
        model, scale, meta = load_autoencoder(path)
        if json.loads(meta.get("checkpoint_sha256", '""')) != train.checkpoint_sha256:
            raise CheckpointError(f"{path} was trained on the features of another checkpoint; train it again with "
                                  f"`alexnet codes train {checkpoint} --data {store} --bits {b}`")
        db, qs = encode(model, scale, train.vectors), encode(model, scale, val.vectors)
        start = time.perf_counter()
        _, idx = hamming_nearest(db, qs, k)
        rows.append(_row(f"{b}-bit code (Hamming)", b, db.shape[1], train.labels[idx], val.labels,
                         time.perf_counter() - start, k))
    start = time.perf_counter()
    _, idx = nearest(train.vectors, val.vectors, k, progress=progress)
    rows.append(_row("fc7 float16 (Euclidean)", None, train.vectors.shape[1] * 2, train.labels[idx], val.labels,
                     time.perf_counter() - start, k))
    pix_train, pix_val = (pixel_vectors(st, s, PIXEL_SIDE, progress) for s in (st.train_split, st.eval_split))
    start = time.perf_counter()
    _, idx = nearest(pix_train, pix_val, k)
    rows.append(_row(f"pixels {PIXEL_SIDE}x{PIXEL_SIDE} (Euclidean)", None, pix_train.shape[1],
                     train.labels[idx], val.labels, time.perf_counter() - start, k))
    png = folder / "codes.png"
    _plot(rows, k, png)
    result = {"checkpoint": str(checkpoint), "store": str(st.root), "train_images": len(train.labels),
              "queries": len(val.labels), "k": k, "rows": rows}
    write_section(
        folder, "codes", "Binary codes from an auto-encoder (Section 6.1's proposal)",
        f"fc7 vectors compressed to B-bit codes by an auto-encoder trained on the {len(train.labels)} training "
        f"vectors; every {st.eval_split} image retrieves its {k} nearest training codes by Hamming distance. "
        "Precision@k against Euclidean search on fc7 itself and on raw pixels, with the bytes each image "
        "takes and the exhaustive search speed on this machine.",
        image=png, table={"columns": ["search", "bytes / image", "precision@1", f"precision@{k}", "queries / s"],
                          "rows": [[r["search"], r["bytes_per_image"], f"{100 * r['precision_at_1']:.1f} %",
                                    f"{100 * r[f'precision_at_{k}']:.1f} %", round(r["queries_per_s"])]
                                   for r in rows]},
        **result)
    return result


def _row(name: str, bits: int | None, nbytes: int, found: np.ndarray, labels: np.ndarray, seconds: float,
         k: int) -> dict:
    return {"search": name, "bits": bits, "bytes_per_image": int(nbytes),
            "precision_at_1": precision_at_k(found[:, :1], labels),
            f"precision_at_{k}": precision_at_k(found, labels), "queries_per_s": len(labels) / max(seconds, 1e-9)}


def _plot(rows: list[dict], k: int, out: Path) -> None:
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coded = [r for r in rows if r["bits"] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot([r["bits"] for r in coded], [100 * r[f"precision_at_{k}"] for r in coded], "o-", label="binary codes")
    for r, style in zip([r for r in rows if r["bits"] is None], ("--", ":"), strict=False):
        ax.axhline(100 * r[f"precision_at_{k}"], linestyle=style, color="grey", label=r["search"])
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["bits"] for r in coded], [str(r["bits"]) for r in coded])
    ax.set_xlabel("code length (bits)")
    ax.set_ylabel(f"precision@{k} (%)")
    ax.set_title("Retrieval precision against code length", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def format_codes(result: dict) -> str:
    if "models" in result:
        return "\n".join(f"{m['bits']:>4} bits: final loss {m['final_loss']:.4f} in {m['seconds']:.0f} s -> {m['path']}"
                         for m in result["models"])
    k = result["k"]
    lines = [f"{result['queries']} queries against {result['train_images']} training images:"]
    lines.extend(f"  {r['search']:<28} {r['bytes_per_image']:>6} B/image  precision@1 "
                 f"{100 * r['precision_at_1']:5.1f} %  precision@{k} {100 * r[f'precision_at_{k}']:5.1f} %  "
                 f"{r['queries_per_s']:>10,.0f} queries/s" for r in result["rows"])
    return "\n".join(lines)
