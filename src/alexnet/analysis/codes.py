"""`alexnet codes`: the short binary codes Section 6.1 proposes for fast retrieval.

The paper: "Computing similarity by using Euclidean distance between two 4096-dimensional, real-valued
vectors is inefficient, but it could be made efficient by training an auto-encoder to compress these
vectors to short binary codes" (the method of Krizhevsky and Hinton, 2011). Here:

* The auto-encoder: a linear encoder 4096 -> B with a logistic code layer, and a decoder
  B -> 1024 -> 4096 (ReLU), trained to reconstruct the training split's fc7 vectors, centred on their
  mean and divided by their mean norm (so the loss does not depend on the activation scale), with
  squared error and Adam for 10 epochs.
* Binary during training too: the decoder sees the code itself (the logistic rounded to 0 or 1) while
  the gradient passes through the logistic (a straight-through estimator).
  Why these choices: semantic hashing's Gaussian noise on the code layer's input, without its RBM
  pre-training, drives every code to the same value; uncentred vectors through a wider (1024-unit)
  encoder give codes that use few of their bits. Centring, the linear encoder and a decoder whose output
  layer starts at zero give nearly all-distinct codes with every bit in use (docs/analyses.md
  has the measured precision of each).
* A code is the sign of the code layer's input (the logistic above 0.5), B bits packed 8 to a byte.
* The baseline a learnt code must beat: random hyperplanes (the signs of B Gaussian projections of the
  centred vectors, locality-sensitive hashing), same bits, same search.
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
from alexnet.analysis.retrieval import PIXEL_SIDE, chance_precision, measure, nearest
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


class CodeAutoencoder(nn.Module):
    """fc7 vector -> B binary code units -> reconstruction (see the module docstring).

    ``centre`` and ``scale`` normalise the input (the training vectors' mean and mean norm); `forward`
    and `code` take normalised vectors, `normalise` makes them.
    """

    def __init__(self, dim: int, bits: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("centre", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.encoder = nn.Linear(dim, bits)
        self.decoder = nn.Sequential(nn.Linear(bits, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        # The reconstruction starts at the mean (0 after centring): the loss starts at about 1, not at the
        # hundreds that a random decoder of 4096 outputs gives, which swamps the encoder's gradient.
        nn.init.zeros_(self.decoder[2].weight)
        nn.init.zeros_(self.decoder[2].bias)

    def normalise(self, vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(np.asarray(vectors, dtype=np.float32)) - self.centre) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.encoder(x))
        binary = p + ((p > 0.5).to(p.dtype) - p).detach()  # forward: the code; backward: the logistic's gradient
        return self.decoder(binary)

    @torch.no_grad()
    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes (N, B) bool of normalised vectors."""
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
    n = len(db)
    k = min(k, n)
    ids = torch.arange(n, dtype=torch.int64)
    dist = np.empty((len(qs), k), dtype=np.int64)
    idx = np.empty((len(qs), k), dtype=np.int64)
    for a in range(0, len(qs), chunk):
        d = np.bitwise_count(qs[a : a + chunk, None, :] ^ db[None, :, :]).sum(axis=2, dtype=np.int64)
        key = torch.from_numpy(d) * n + ids  # unique, in (distance, index) order
        smallest = torch.topk(key, k, dim=1, largest=False, sorted=True).values.numpy()
        dist[a : a + chunk], idx[a : a + chunk] = np.divmod(smallest, n)
    return dist, idx


def train_autoencoder(
    vectors: np.ndarray,
    bits: int,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[CodeAutoencoder, list[float]]:
    """Fit one auto-encoder to (N, D) vectors; returns (model, mean loss per epoch)."""
    torch.manual_seed(seed_int(seed, 1, bits))  # the weights
    model = CodeAutoencoder(vectors.shape[1], bits)
    raw = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
    model.centre.copy_(raw.mean(0))
    model.scale.fill_(float((raw - model.centre).norm(dim=1).mean()) or 1.0)
    data = model.normalise(raw)
    del raw
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed_int(seed, 2, bits))  # the batches
    steps = -(-len(data) // batch_size)
    bar = progress_bar(epochs * steps, 0, f"auto-encoder {bits} bits", progress)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for s in range(steps):
            x = data[order[s * batch_size : (s + 1) * batch_size]]
            loss = (model(x) - x).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            bar.update(1)
        losses.append(total / len(data))
    bar.close()
    return model.eval(), losses


def encode(model: CodeAutoencoder, vectors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Packed codes (N, B/8) uint8 of raw (N, D) vectors."""
    out = [pack_bits(model.code(model.normalise(vectors[a : a + chunk])).numpy())
           for a in range(0, len(vectors), chunk)]
    return np.concatenate(out) if out else np.zeros((0, -(-model.bits // 8)), dtype=np.uint8)


def random_hyperplane_codes(train: np.ndarray, queries: np.ndarray, bits: int, seed: int = 0,
                            chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Packed sign codes of B Gaussian projections of the vectors minus the training mean (LSH)."""
    gen = torch.Generator().manual_seed(seed_int(seed, 3, bits))
    centre = torch.from_numpy(np.asarray(train[:: max(1, len(train) // 4096)], dtype=np.float32)).mean(0)
    planes = torch.randn(train.shape[1], bits, generator=gen)

    def codes(vectors: np.ndarray) -> np.ndarray:
        return np.concatenate([pack_bits((((torch.from_numpy(np.asarray(vectors[a : a + chunk], dtype=np.float32))
                                            - centre) @ planes) > 0).numpy()) for a in range(0, len(vectors), chunk)])

    return codes(train), codes(queries)


def _model_path(folder: Path, bits: int) -> Path:
    return folder / f"codes-{bits}.safetensors"


def save_autoencoder(model: CodeAutoencoder, path: Path, **meta: object) -> None:
    save_weights(model.state_dict(), path, {"bits": str(model.bits), **{k: json.dumps(v) for k, v in meta.items()}})


def load_autoencoder(path: Path) -> tuple[CodeAutoencoder, dict]:
    state, meta = load_weights(path)
    if "bits" not in meta or "encoder.weight" not in state:
        raise CheckpointError(f"{path} is not an auto-encoder written by `alexnet codes train`; train it again")
    model = CodeAutoencoder(state["encoder.weight"].shape[1], int(meta["bits"]), state["decoder.0.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval(), meta


def train_codes(
    checkpoint: str | os.PathLike,
    store: str | os.PathLike,
    bits: tuple[int, ...] = BITS,
    epochs: int = 10,
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
        model, losses = train_autoencoder(train.vectors, b, epochs=epochs, seed=seed, progress=progress)
        path = _model_path(folder, b)
        save_autoencoder(model, path, checkpoint_sha256=train.checkpoint_sha256, epochs=epochs, seed=seed,
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
        model, meta = load_autoencoder(path)
        if json.loads(meta.get("checkpoint_sha256", '""')) != train.checkpoint_sha256:
            raise CheckpointError(f"{path} was trained on the features of another checkpoint; train it again with "
                                  f"`alexnet codes train {checkpoint} --data {store} --bits {b}`")
        learnt = encode(model, train.vectors), encode(model, val.vectors)
        for name, (db, qs) in (("auto-encoder", learnt),
                               ("random hyperplanes", random_hyperplane_codes(train.vectors, val.vectors, b))):
            rows.append(measure({"search": f"{b}-bit {name} (Hamming)", "method": name, "bits": b},
                                lambda db=db, qs=qs: hamming_nearest(db, qs, k)[1], train.labels, val.labels, k,
                                db.shape[1]))
    rows.append(measure({"search": "fc7 float16 (Euclidean)", "method": None, "bits": None},
                        lambda: nearest(train.vectors, val.vectors, k, progress=progress)[1], train.labels,
                        val.labels, k, train.vectors.shape[1] * 2))
    pix_train, pix_val = (pixel_vectors(st, s, PIXEL_SIDE, progress) for s in (st.train_split, st.eval_split))
    rows.append(measure({"search": f"pixels {PIXEL_SIDE}x{PIXEL_SIDE} (Euclidean)", "method": None, "bits": None},
                        lambda: nearest(pix_train, pix_val, k)[1], train.labels, val.labels, k, pix_train.shape[1]))
    png = folder / "codes.png"
    chance = chance_precision(train.labels, val.labels)
    _plot(rows, k, chance, png)
    result = {"checkpoint": str(checkpoint), "store": str(st.root), "train_images": len(train.labels),
              "queries": len(val.labels), "k": k, "chance_precision": chance, "rows": rows}
    write_section(
        folder, "codes", "Binary codes from an auto-encoder (Section 6.1's proposal)",
        f"fc7 vectors compressed to B-bit codes by an auto-encoder trained on the {len(train.labels)} training "
        f"vectors; every {st.eval_split} image retrieves its {k} nearest training codes by Hamming distance. "
        "Precision@k against codes of the same length from random hyperplanes and Euclidean search on fc7 "
        f"itself and on raw pixels (chance {100 * chance:.1f} %), with the bytes each image takes and the "
        "exhaustive search speed on this machine.",
        image=png, table={"columns": ["search", "bytes / image", "precision@1", f"precision@{k}", "queries / s"],
                          "rows": [[r["search"], r["bytes_per_image"], f"{100 * r['precision_at_1']:.1f} %",
                                    f"{100 * r[f'precision_at_{k}']:.1f} %", round(r["queries_per_s"])]
                                   for r in rows]},
        **result)
    return result


def _plot(rows: list[dict], k: int, chance: float, out: Path) -> None:
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method, style in (("auto-encoder", "o-"), ("random hyperplanes", "s--")):
        coded = [r for r in rows if r["method"] == method]
        ax.plot([r["bits"] for r in coded], [100 * r[f"precision_at_{k}"] for r in coded], style,
                label=f"{method} codes")
    for r, style in zip([r for r in rows if r["bits"] is None], ("--", ":"), strict=False):
        ax.axhline(100 * r[f"precision_at_{k}"], linestyle=style, color="grey", label=r["search"])
    ax.axhline(100 * chance, color="#d03030", linewidth=0.8, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["bits"] for r in coded], [str(r["bits"]) for r in coded])
    ax.set_ylim(bottom=0)
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
    lines.extend(f"  {r['search']:<36} {r['bytes_per_image']:>6} B/image  precision@1 "
                 f"{100 * r['precision_at_1']:5.1f} %  precision@{k} {100 * r[f'precision_at_{k}']:5.1f} %  "
                 f"{r['queries_per_s']:>10,.0f} queries/s" for r in result["rows"])
    return "\n".join(lines)
