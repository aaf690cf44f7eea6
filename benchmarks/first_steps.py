"""The paper's recipe, step by step: the training loss and fc6/fc7's live units over the first steps.

Trains the `paper` preset (N(0, 0.01) weights, biases 1, lr 0.01, raw pixels minus the mean image, fp32, batch
128) on a prepared store, once per network reading, from the same seed, and records each step's loss and,
every `--probe-every` steps, the live units of fc6 and fc7 (`alexnet.analysis.live`). The readings:

    faithful  the paper's dropout (unscaled in training, x0.5 at test), LRN alpha 1e-4 / 5, biases not decayed
    old       PyTorch's inverted dropout, LRN alpha 1e-4 undivided, biases decayed (this package before)

Run it under the allocator the `alexnet` command uses (glibc's malloc makes a CPU step much slower):

    LD_PRELOAD=$(python -c "from alexnet.allocator import mimalloc_library as m; print(m())") \
    python benchmarks/first_steps.py --store ~/.cache/alexnet/stores/imagenette --steps 150 \
        --out experiments/results/first-steps.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from alexnet.analysis.live import live_units, probe_batch
from alexnet.config import load_config
from alexnet.data.augment import Augmenter
from alexnet.data.loader import TrainBatches
from alexnet.data.store import Store
from alexnet.engine import TrainStep, autocast_context
from alexnet.fsutil import atomic_write
from alexnet.info import environment
from alexnet.models.build import build_model
from alexnet.optim import build_optimizer, parameter_groups
from alexnet.seeding import batch_generator

READINGS = {
    "faithful": ("model.dropout_form=paper", "model.lrn_alpha=over-n", "optim.decay_biases=false"),
    "old": ("model.dropout_form=inverted", "model.lrn_alpha=printed", "optim.decay_biases=true"),
}


def run(reading: str, store: Store, steps: int, probe_every: int, seed: int, precision: str) -> dict:
    config = load_config("paper", [f"data.store={store.root}", f"run.seed={seed}", f"run.precision={precision}",
                                   *READINGS[reading]])
    config = config.with_num_classes(store.num_classes, str(store.root))
    torch.manual_seed(seed)
    model = build_model(config.model)
    optim = config.optim
    optimizer = build_optimizer(parameter_groups(model, optim.weight_decay, optim.decay_biases, optim.bias_lr_scale),
                                optim.kind, optim.lr, optim.momentum, optim.weight_decay)
    # the training loop's own step (rate, precision, loss, update), at the preset's constant first rate
    train_step = TrainStep(model, optimizer, lambda step: optim.lr, autocast_context(torch.device("cpu"), precision))
    augmenter = Augmenter(config.data, store.mean, store.eigvals, store.eigvecs)
    probe = probe_batch(store, augmenter)
    batches = TrainBatches.from_store(store, in_memory=True, batch_size=config.data.batch_size, seed=seed,
                                      rank=0, world_size=1, device=torch.device("cpu"), workers=0)
    losses, live, t0 = [], [], time.monotonic()
    model.train()
    epoch = 0
    while len(losses) < steps:
        for batch_idx, images, labels in batches.epoch(epoch):
            if len(losses) % probe_every == 0:
                live.append({"step": len(losses), **live_units(model, probe)})
            loss, _ = train_step(len(losses), augmenter.train(images, batch_generator(seed, epoch, batch_idx)),
                                 labels)
            losses.append(loss.item())
            print(f"{reading} step {len(losses)}: loss {losses[-1]:.4f}"
                  + (f", live fc7 {live[-1]['fc7']}" if (len(losses) - 1) % probe_every == 0 else ""), flush=True)
            if len(losses) == steps:
                break
        epoch += 1
    live.append({"step": len(losses), **live_units(model, probe)})
    return {"overrides": list(READINGS[reading]), "loss": losses, "live_units": live,
            "seconds": time.monotonic() - t0}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_live) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"faithful": "C0", "old": "C3"}
    for reading, r in results["readings"].items():
        ax.plot(range(1, len(r["loss"]) + 1), r["loss"], color=colours[reading], lw=1, label=reading)
        ax_live.plot([p["step"] for p in r["live_units"]], [p["fc7"] for p in r["live_units"]], "o-", ms=3,
                     color=colours[reading], label=f"{reading}: fc7")
        ax_live.plot([p["step"] for p in r["live_units"]], [p["fc6"] for p in r["live_units"]], "s:", ms=3,
                     color=colours[reading], label=f"{reading}: fc6")
    chance = math.log(results["classes"])
    ax.axhline(chance, color="grey", ls=":", lw=0.8)
    ax.text(1, chance, f" ln {results['classes']}", fontsize=8, color="grey", va="bottom")
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="the paper preset, per step")
    ax_live.set(xlabel="step", ylabel="live units (of 4096)", title="fc6 / fc7 units alive on 256 val images")
    for a in (ax, ax_live):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax_live.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a prepared store (Imagenette's for the recorded run)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--probe-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--readings", nargs="+", choices=tuple(READINGS), default=list(READINGS))
    parser.add_argument("--out", type=Path, required=True, help="results JSON (a PNG is written beside it)")
    args = parser.parse_args()
    store = Store.open(args.store)
    env = environment("cpu")
    results = {
        "command": "python benchmarks/first_steps.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "store": str(store.root), "classes": store.num_classes, "steps": args.steps, "seed": args.seed,
        "precision": args.precision, "hardware": {k: env.get(k) for k in ("cpu", "cores", "threads", "torch")},
        "readings": {r: run(r, store, args.steps, args.probe_every, args.seed, args.precision)
                     for r in args.readings},
    }
    text = json.dumps(results, indent=1) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda f: f.write(text.encode()))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
