"""Time to accuracy: the wall time and epochs the paper's network needs to reach 60 % and 70 % validation
top-1 on Imagenette (centre crop) on the machine it runs on, a figure to track across versions.

The recipe is the demo's (Kaiming initialisation, input / 64, a short warm-up and a linear decay, bf16 on
the CPU) over a fixed horizon of the budget's epochs, validated after every epoch; a run stops at the
first epoch end at or above the highest target (the schedule stays that of the whole horizon), or at the
horizon. The time is the run's own wall time at that epoch end (training and its validations, not the
store's preparation); an accuracy is reached at the first epoch end at or above it, so the figures are
upper bounds at the resolution of one epoch. A target not reached within the horizon is reported as such.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from alexnet.config import Config, config_to_dict, load_config
from alexnet.experiments.data import ImagenetteBudget, imagenette_overrides
from alexnet.experiments.runner import Metrics, Runner, RunOutcome, RunSpec, summary_stats

NAME = "time-to-accuracy"
CLAIM = "time to 60 % and 70 % Imagenette validation top-1 for the paper's network (a figure to track)"
TARGETS = (0.60, 0.70)


Budget = ImagenetteBudget  # epochs: the schedule's horizon and the most epochs a run trains

BUDGETS = {
    "cpu": Budget("cpu", 8, True, "a horizon of 8 epochs"),
    "gpu": Budget("gpu", 30, False, "a horizon of 30 epochs"),
    "smoke": Budget("smoke", 2, True, "tests"),
}


def base_config(seed: int, budget: Budget, overrides: tuple[str, ...]) -> Config:
    return load_config("demo", [
        f"data.store={budget.store}",
        f"run.epochs={budget.epochs}",
        "run.plan_budget=false",
        "run.budget_minutes=0.0",
        "run.eval_every_epochs=1",
        "run.checkpoint_every_epochs=1",
        f"run.seed={seed}",
        *overrides,
    ])


def reached(metrics: Metrics, target: float) -> dict | None:
    """The first epoch end with validation top-1 accuracy >= target: {epoch, wall_s, accuracy}, or None."""
    for m in metrics:
        if m.get("val_top1_error") is not None and 1 - m["val_top1_error"] >= target:
            return {"epoch": m["epoch"], "wall_s": m["wall_time_s"], "accuracy": 1 - m["val_top1_error"]}
    return None


def reached_target(metrics: Metrics) -> bool:
    return reached(metrics, max(TARGETS)) is not None


def run_experiment(runner: Runner, seeds: int, budget: Budget, overrides: tuple[str, ...] = ()) -> dict:
    overrides = imagenette_overrides(budget, overrides)
    outcomes = [runner.run(RunSpec(f"seed{seed}", "alexnet", base_config(seed, budget, overrides), reached_target))
                for seed in range(seeds)]
    return summarize(outcomes, budget, seeds, overrides)


def summarize(outcomes: list[RunOutcome], budget: Budget, seeds: int, overrides: tuple[str, ...]) -> dict:
    per_target = {}
    for target in TARGETS:
        hits = [reached(o.metrics, target) for o in outcomes]
        per_target[f"{round(100 * target)}"] = {
            "minutes": summary_stats([h["wall_s"] / 60 for h in hits if h]),
            "epochs": summary_stats([h["epoch"] for h in hits if h]),
            "not_reached": [{"seed": o.seed, "epochs": o.epochs} for o, h in zip(outcomes, hits, strict=True)
                            if h is None],
        }
    runs = [{"seed": o.seed, "epochs_trained": o.epochs, "wall_s": o.wall_s, "status": o.status,
             "val_top1_accuracy": [None if m.get("val_top1_error") is None else 1 - m["val_top1_error"]
                                   for m in o.metrics],
             "wall_time_s": [m["wall_time_s"] for m in o.metrics],
             "images_per_s": statistics.fmean(m["images_per_s"] for m in o.metrics) if o.metrics else None}
            for o in outcomes]
    results = {
        "experiment": NAME, "claim": CLAIM, "budget": asdict(budget), "seeds": list(range(seeds)),
        "overrides": list(overrides), "config": config_to_dict(base_config(0, budget, overrides)),
        "targets": per_target, "runs": runs, "wall_time_s": sum(o.wall_s for o in outcomes),
        "runs_trained": len(outcomes),
    }
    results["table"] = table_row(results)
    return results


def _fmt(stats: dict, unit: str) -> str:
    std = f" ± {stats['std']:.1f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.1f}{std} {unit}"


def table_row(results: dict) -> dict:
    parts = []
    for key, t in results["targets"].items():
        if t["minutes"]["n"]:
            text = f"{key} %: {_fmt(t['minutes'], 'min')}, {_fmt(t['epochs'], 'epochs')} (n = {t['minutes']['n']})"
        else:
            text = f"{key} %: not reached"
        if t["not_reached"]:
            text += f"; not reached by {len(t['not_reached'])} seed(s) in {t['not_reached'][0]['epochs']} epochs"
        parts.append(text)
    return {"claim": results["claim"], "paper": "no figure (the paper trained for 5-6 days on two GTX 580s)",
            "ours": "; ".join(parts), "verdict": "not testable here (no figure in the paper: a number to track)",
            "setting": "demo recipe, validated after every epoch", "figure": f"{NAME}.png"}


def plot(results: dict, path: Path) -> None:
    """Validation top-1 accuracy against wall time, every seed, with the targets as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alexnet.fsutil import atomic_write

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in results["runs"]:
        points = [(w / 60, 100 * a) for w, a in zip(r["wall_time_s"], r["val_top1_accuracy"], strict=True)
                  if a is not None]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", ms=3, label=f"seed {r['seed']}")
    for target in TARGETS:
        ax.axhline(100 * target, color="grey", ls=":", lw=0.8)
        ax.text(ax.get_xlim()[1], 100 * target, f" {round(100 * target)} %", va="center", fontsize=8, color="grey")
    ax.set(xlabel="wall time of the run (minutes)", ylabel="validation top-1 accuracy (%, centre crop)",
           title=f"The paper's network on Imagenette, demo recipe, horizon {results['budget']['epochs']} epochs")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
