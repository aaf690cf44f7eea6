"""Figure 1 (Section 3.1): with ReLUs a four-layer CNN reaches 25 % training error on CIFAR-10 six times
faster than the same network with tanh units.

The paper: "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25% training error
rate on CIFAR-10 six times faster than an equivalent network with tanh neurons (dashed line). The learning
rates for each network were chosen independently to make training as fast as possible. No regularization of
any kind was employed."

**The network.** The paper does not list its layers; its CIFAR-10 nets are Krizhevsky's cuda-convnet layer
files of 2011-12 (footnote 3 points there for Section 3.3's "four-layer CNN"). We follow
``layers-19pct.cfg``: conv1 (32 5x5, padding 2) -> 3/2 max pool -> ReLU, conv2 (32 5x5) -> ReLU -> 3/2 average
pool, conv3 (64 5x5) -> ReLU -> 3/2 average pool, fc10 -> softmax; weights N(0, initW) with initW 1e-4 for
conv1 and 0.01 for conv2, conv3 and fc10, biases 0 (registered as ``cifar_fig1_relu`` / ``cifar_fig1_tanh``,
see `alexnet.models.small`). Why that file:

* it has four learned layers, three convolutional and one fully connected, and the paper counts learned
  layers ("eight learned layers" for AlexNet, fc8 included);
* it is ``layers-18pct.cfg`` (the file of the period's best quick CIFAR-10 result) without the two
  normalisation layers, and Figure 1 says "no regularization of any kind"; the 18pct file's ``rnorm`` is a
  normalisation *within* each map over a 3x3 neighbourhood, not the paper's cross-map LRN, which only the
  ``conv-local-11pct`` file has (``cmrnorm``);
* the conv-local files (two conv layers, two locally connected layers, fc10: five learned layers) are the
  13 % / 11 % nets of Section 3.3 (their names say so; the paper calls that net "four-layer" too, counting
  its hidden layers, so the count alone does not settle it), and ``layers-80sec.cfg`` adds an fc64 layer
  (five learned layers).

The tanh net is the same file with tanh (f(x) = tanh(x), cuda-convnet's ``tanh[1,1]``) wherever it has ReLU
(max pooling commutes with either, so conv1's activation before or after pool1 is the same function).

**The training.** As the file's parameters, less regularisation: the paper's SGD rule (cuda-convnet's: the
learning rate multiplies the mean gradient inside the momentum, 0.9), batch 128, weight decay 0 (the file's
``wc`` dropped: no regularisation), no dropout, no augmentation (no crops, no flips), raw 0-255 pixels minus
the training set's mean image (cuda-convnet's CIFAR data provider), one constant learning rate per network.
Deviations from the file: biases learn at the weights' rate (the file's ``epsB`` is twice ``epsW``); runs
flush denormal floats to zero (`alexnet.experiments.runner`).

**Budgets.** ``paper``: all 50,000 training images, runs of up to 40 (ReLU) and 100 (tanh) epochs, fp32.
``cpu`` (the default; reduced, and every result it gives says so): the first 1,000 training images of each
class (10,000 images, so an epoch is 78 steps instead of 390), the same caps, fp32, 2 threads, the test error
at the end of each run on 2,000 test images. Both run in fp32: in bf16, tanh's gradient 1 - tanh(x)^2 is
exactly 0 for |x| >= 3.5 (fp32: 3.6e-3), which would slow tanh for a reason the paper did not have. Epochs
of the CPU budget are epochs of its subset, so they are not the paper's epochs; the ratio is the claim being
checked. ``smoke``: a few steps, for tests.

**The measure.** "Training error" is the error on the training batches as they are trained, averaged over
the epoch (what cuda-convnet printed), recorded at each epoch's end. Epochs to a threshold interpolate
linearly between epoch ends (from chance, 90 %, at epoch 0); a run that never reaches it within its cap is
reported as "not reached in N epochs", and a ratio that involves one becomes a lower bound. Besides the
paper's 25 %, the ratio is reported at every threshold from 50 % down to 20 % (final runs train until 20 %
or their cap): how much of the gap the paper reports depends on where it is read.

**The learning rates.** For each activation a sweep over a grid, at seed 0: the rate with the fewest epochs
to 25 % wins (a run that has trained as many epochs as the best so far without reaching 25 % is stopped: it
cannot win). While the best rate is the highest or the lowest tried, the grid grows by a factor of 2 that
way, so the chosen rate ends inside its grid (or the budget's `max_rates` says where it stopped). The chosen
rate then trains seeds 1..n: the sweep's seed is not reused as a final seed (it was selected on).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from alexnet.config import Config, config_to_dict, load_config
from alexnet.experiments.data import cifar10_store
from alexnet.experiments.runner import Metrics, Runner, RunOutcome, RunSpec, summary_stats, t975

NAME = "relu-vs-tanh"
TARGET = 0.25  # training error
LOWEST = 0.20  # final runs train until this training error (or their cap): the ratio down to 20 %
THRESHOLDS = (0.50, 0.45, 0.40, 0.35, 0.30, 0.25, 0.20)
CHANCE = 0.9  # CIFAR-10's error at epoch 0
PAPER_RATIO = 6.0
MODELS = {"relu": "cifar_fig1_relu", "tanh": "cifar_fig1_tanh"}
CLAIM = "Figure 1: a four-layer CNN with ReLUs reaches 25 % training error on CIFAR-10 faster than with tanh"


@dataclass(frozen=True)
class Budget:
    """How much training an experiment may spend.

    rates: the sweep's first learning rates, tried in this order (the likeliest winner first stops losers
        soonest); while the best is the highest or lowest rate tried, the grid grows by a factor of 2 that
        way, up to `max_rates` rates.
    caps: the most epochs a run of each activation trains.
    extra_epochs: trained after a run reaches 25 % (so the figure shows it going on).
    precision: "fp32" or "bf16" (autocast).
    train_per_class: train on the first N training images of each class (None: all 5,000).
    test_per_class: the test error at the end of each run (a by-product here) on the first N test images of
        each class (None: all 1,000).
    reduced: whether this is less than the paper's Figure 1 (the whole training set, about 40 epochs).
    runs: the runs folder's name: budgets that differ only in caps share it, so a longer one continues
        the shorter one's runs (the rate is constant, so a continued run is the longer run).
    """

    name: str
    rates: tuple[float, ...]
    max_rates: int
    caps: dict[str, int]
    extra_epochs: int
    precision: str
    train_per_class: int | None
    test_per_class: int | None
    reduced: bool
    note: str
    runs: str


BUDGETS = {
    "cpu": Budget("cpu", (0.002, 0.001, 0.004), 8, {"relu": 40, "tanh": 100}, 1, "fp32", 1000, 200, True,
                  "10,000 of the 50,000 training images (the first 1,000 of each class), fp32, 2 threads, at most "
                  "40 (ReLU) / 100 (tanh) epochs", "cpu-fp32"),
    "paper": Budget("paper", (0.002, 0.001, 0.004), 8, {"relu": 40, "tanh": 100}, 1, "fp32", None, None, False,
                    "all 50,000 training images, up to 40 (ReLU) / 100 (tanh) epochs a run, fp32", "paper"),
    "smoke": Budget("smoke", (0.002, 0.001), 2, {"relu": 2, "tanh": 2}, 0, "fp32", None, None, True,
                    "a few steps, for tests", "smoke"),
}
THREADS = {"cpu": 2}  # fixed so that a run repeats exactly on a machine (oneDNN's sums depend on threads)


def base_config(model: str, lr: float, seed: int, budget: Budget, cap: int, overrides: tuple[str, ...] = ()) -> Config:
    """The run's config: the cifar10 preset turned into Figure 1's recipe (see the module docstring)."""
    return load_config("cifar10", [
        f"model.name={model}",
        "model.dropout=0.0",
        "data.random_crop=false",
        "data.flip=false",
        "data.lighting_std=0.0",
        "data.normalize=mean_image",
        "data.input_scale=1.0",
        "data.batch_size=128",
        "optim.kind=paper",
        f"optim.lr={lr!r}",
        "optim.momentum=0.9",
        "optim.weight_decay=0.0",
        "schedule.kind=step",
        "schedule.milestones=[1000000]",  # never reached: one constant rate
        "schedule.warmup_epochs=0.0",
        f"run.epochs={cap}",
        f"run.seed={seed}",
        f"run.precision={budget.precision}",
        *([f"run.threads={THREADS[budget.name]}"] if budget.name in THREADS else []),
        "run.checkpoint_every_epochs=1",
        "run.checkpoint_every_minutes=0.0",
        "run.eval_every_epochs=0",
        *overrides,
    ])


def epochs_to_target(metrics: Metrics, target: float = TARGET, start: float = CHANCE) -> float | None:
    """Epochs until the training error first reaches `target`, interpolated linearly between epoch ends
    (None: not reached)."""
    prev_epoch, prev_error = 0.0, start
    for m in metrics:
        epoch, error = m["epoch"], m["train_error"]
        if error <= target:
            if prev_error <= target:
                return prev_epoch
            return prev_epoch + (prev_error - target) / (prev_error - error) * (epoch - prev_epoch)
        prev_epoch, prev_error = epoch, error
    return None


def done_rule(extra: int, bound: int | None, target: float = TARGET):
    """The stop rule: `extra` epochs after the one that reached `target`, or, not reached, at `bound` epochs."""

    def done(metrics: Metrics) -> bool:
        reached = epochs_to_target(metrics, target)
        if reached is not None:
            return len(metrics) >= math.ceil(reached) + extra
        return bound is not None and len(metrics) >= bound

    return done


def _spec(act: str, lr: float, seed: int, budget: Budget, overrides: tuple[str, ...],
          bound: int | None = None, target: float = TARGET) -> RunSpec:
    config = base_config(MODELS[act], lr, seed, budget, budget.caps[act], overrides)
    return RunSpec(f"{act}-lr{lr:g}-seed{seed}", act, config, done_rule(budget.extra_epochs, bound, target),
                   {"lr": lr, "activation": act})


def _rank(outcome: RunOutcome) -> tuple:
    """Sweep order: reached sooner first; among runs that never reached, the lower last training error."""
    reached = epochs_to_target(outcome.metrics)
    last = outcome.metrics[-1]["train_error"] if outcome.metrics else 1.0
    return (reached is None, reached if reached is not None else last)


def sweep(runner: Runner, act: str, budget: Budget, overrides: tuple[str, ...]) -> tuple[float, list[RunOutcome]]:
    """Seed 0 at each of the budget's rates (extended at the edge the best sits on); returns the chosen rate
    and the sweep's outcomes in the order they ran."""
    rates, outcomes = list(budget.rates), []
    while len(outcomes) < len(rates):
        reached = [e for e in (epochs_to_target(o.metrics) for o in outcomes) if e is not None]
        bound = math.ceil(min(reached)) if reached else None
        outcomes.append(runner.run(_spec(act, rates[len(outcomes)], 0, budget, overrides, bound)))
        best = min(outcomes, key=_rank).facts["lr"]
        if len(outcomes) == len(rates) and len(rates) < budget.max_rates:
            if best == max(rates):
                rates.append(best * 2)
            elif best == min(rates):
                rates.append(best / 2)
    return min(outcomes, key=_rank).facts["lr"], outcomes


def run_experiment(runner: Runner, seeds: int, budget: Budget, overrides: tuple[str, ...] = ()) -> dict:
    """Sweep, then every seed at the chosen rates; returns the results (without environment facts).
    `overrides` apply to every run's config; without a data.store among them the budget's CIFAR-10 store is
    used (prepared once)."""
    if not any(o.startswith("data.store=") for o in overrides):
        store = cifar10_store(budget.train_per_class, budget.test_per_class, runner.log)
        overrides = (f"data.store={store}", *overrides)
    chosen, sweeps, finals = {}, {}, {}
    for act in MODELS:
        chosen[act], sweeps[act] = sweep(runner, act, budget, overrides)
    for act in MODELS:  # seeds 1..n: the sweep's seed 0 was selected on
        finals[act] = [runner.run(_spec(act, chosen[act], seed, budget, overrides, target=LOWEST))
                       for seed in final_seeds(seeds)]
    return summarize(chosen, sweeps, finals, budget, seeds, overrides)


def final_seeds(seeds: int) -> range:
    return range(1, seeds + 1)


def _run_record(o: RunOutcome) -> dict:
    return {
        "key": o.key, "activation": o.variant, "seed": o.seed, "lr": o.facts["lr"], "status": o.status,
        "epochs_trained": o.epochs, "epochs_to_25": epochs_to_target(o.metrics),
        "train_error": [m["train_error"] for m in o.metrics],
        "images_per_s": statistics.fmean(m["images_per_s"] for m in o.metrics) if o.metrics else None,
        "test_error_at_end": o.metrics[-1]["val_top1_error"] if o.metrics else None,
        "wall_s": o.wall_s,
    }


def summarize(chosen: dict, sweeps: dict, finals: dict, budget: Budget, seeds: int,
              overrides: tuple[str, ...]) -> dict:
    """The numbers of the results file: per-seed epochs to 25 %, their mean and std, the ratio per seed."""
    runs = {o.key: o for group in (*sweeps.values(), *finals.values()) for o in group}
    per_act = {}
    for act, outcomes in finals.items():
        reached = [epochs_to_target(o.metrics) for o in outcomes]
        per_act[act] = {
            "lr": chosen[act],
            **summary_stats([e for e in reached if e is not None]),
            "not_reached": [{"seed": o.seed, "epochs": o.epochs} for o, e in zip(outcomes, reached, strict=True)
                            if e is None],
        }
    by_threshold = {f"{t:.2f}": ratio_at(finals, t) for t in THRESHOLDS}
    results = {
        "experiment": NAME,
        "claim": CLAIM,
        "paper": {"ratio": PAPER_RATIO, "target_train_error": TARGET},
        "budget": asdict(budget),
        "seeds": list(final_seeds(seeds)),
        "sweep_seed": 0,
        "overrides": list(overrides),
        "config": {act: config_to_dict(base_config(MODELS[act], chosen[act], 0, budget, budget.caps[act], overrides))
                   for act in MODELS},
        "sweep": {act: {"chosen_lr": chosen[act], "runs": [_run_record(o) for o in sweeps[act]]} for act in MODELS},
        "runs": [_run_record(o) for act in MODELS for o in finals[act]],
        "epochs_to_25": per_act,
        "ratio": by_threshold[f"{TARGET:.2f}"],
        "ratio_by_threshold": by_threshold,
        "wall_time_s": sum(o.wall_s for o in runs.values()),
        "runs_trained": len(runs),
    }
    results["table"] = table_row(results)
    return results


def ratio_at(finals: dict, threshold: float) -> dict:
    """tanh's epochs to `threshold` over ReLU's, per seed pair: the values, mean, std and a 95 % interval
    (Student's t over seeds), and lower bounds where tanh did not get there within its run."""
    ratios, lower_bounds = [], []
    for relu, tanh in zip(finals["relu"], finals["tanh"], strict=True):
        r, t = epochs_to_target(relu.metrics, threshold), epochs_to_target(tanh.metrics, threshold)
        if r is not None and t is not None:
            ratios.append(t / r)
        elif r is not None:
            lower_bounds.append({"seed": relu.seed, "at_least": tanh.epochs / r})
    out = {**summary_stats(ratios), "lower_bounds": lower_bounds, "interval": None}
    if len(ratios) > 1:
        half = t975(len(ratios) - 1) * out["std"] / len(ratios) ** 0.5
        out["interval"] = [out["mean"] - half, out["mean"] + half]
    return out


def verdict(ratio: dict) -> str:
    """reproduced: the paper's 6x inside our interval; direction only: the interval above 1 but not at 6x."""
    if ratio["interval"] is None:
        return "not testable here (fewer than 2 seed pairs reached 25 %)"
    lo, hi = ratio["interval"]
    if lo <= PAPER_RATIO <= hi:
        return "reproduced"
    if lo > 1:
        return "direction only"
    return "not at this budget" if hi >= 1 else "opposite sign"


def _fmt(stats: dict) -> str:
    if not stats["n"]:
        return "not reached"
    std = f" ± {stats['std']:.2f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.2f}{std}"


def table_row(results: dict) -> dict:
    """The row of experiments/README.md: claim, paper, ours (with the interval and the ratio at 50 % and
    20 %), the verdict, and what ours ran at."""
    e, ratio = results["epochs_to_25"], results["ratio"]
    parts = []
    if ratio["n"]:
        interval = ratio["interval"]
        text = f"**{ratio['mean']:.2f}x** fewer epochs to 25 %"
        text += f" (95 % [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else " ("
        parts.append(text + f", n = {ratio['n']} seed pairs)")
    if ratio["lower_bounds"]:
        bounds = ", ".join(f"{b['at_least']:.1f}" for b in ratio["lower_bounds"])
        least = min(b["at_least"] for b in ratio["lower_bounds"])
        parts.append(f"**> {least:.1f}x** (a lower bound: tanh not at 25 % within its cap; per seed > {bounds}x)")
    others = [f"{float(t):.0%}: {r['mean']:.2f}x" for t, r in results.get("ratio_by_threshold", {}).items()
              if r["n"] and float(t) in (0.5, 0.2)]
    if others:
        parts.append("at " + ", ".join(others))
    for act in MODELS:
        s = e[act]
        missed = len(s["not_reached"])
        cap = s["not_reached"][0]["epochs"] if missed else None
        text = f"{act} (lr {s['lr']:g}): "
        if s["n"]:
            text += f"{_fmt(s)} epochs to 25 % (n = {s['n']})"
            text += f", {missed} seed(s) not at 25 % in {cap} epochs" if missed else ""
        else:
            text += f"not at 25 % in {cap} epochs ({missed} seeds)"
        parts.append(text)
    return {
        "claim": results["claim"],
        "paper": f"{PAPER_RATIO:g}x fewer epochs to 25 % (the caption: \"several times faster\")",
        "ours": "; ".join(parts),
        "verdict": verdict(ratio) if "interval" in ratio else None,
        "setting": f"learning rates chosen on seed 0 (sweep), seeds {results['seeds'][0]}-{results['seeds'][-1]} "
                   "trained at them",
    }


def plot(results: dict, path: Path) -> None:
    """Figure 1 as the paper draws it (training error against epochs, ReLU solid, tanh dashed, 25 % line),
    every seed, beside the sweep's curves (seed 0, one per learning rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alexnet.fsutil import atomic_write

    fig, (ax, ax_sweep, ax_ratio) = plt.subplots(1, 3, figsize=(20, 4.8), gridspec_kw={"width_ratios": [1.3, 1, 0.8]})
    styles = {"relu": ("C0", "-", "ReLU"), "tanh": ("C3", "--", "tanh")}
    top = 0
    for act, (colour, line, label) in styles.items():
        runs = [r for r in results["runs"] if r["activation"] == act]
        for i, r in enumerate(runs):
            epochs = range(1, len(r["train_error"]) + 1)
            top = max(top, len(r["train_error"]))
            stats = results["epochs_to_25"][act]
            missed = len(stats["not_reached"])
            cap = stats["not_reached"][0]["epochs"] if missed else None
            if not stats["n"]:
                summary = f"not at 25 % in {cap} epochs ({missed} seeds)"
            else:
                summary = f"{_fmt(stats)} epochs to 25 % (n = {stats['n']}" + (
                    f"; {missed} not in {cap})" if missed else ")")
            name = f"{label}, lr {stats['lr']:g}: {summary}" if i == 0 else None
            ax.plot(epochs, r["train_error"], line, color=colour, lw=1.6, alpha=0.85, label=name)
            if r["epochs_to_25"] is not None:
                ax.plot([r["epochs_to_25"]], [TARGET], "o", color=colour, ms=4)
    ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
    ax.text(0.3, TARGET + 0.01, "25 %", color="grey", ha="left", va="bottom", fontsize=8)
    ratio = results["ratio"]
    if ratio["n"]:
        title = f"tanh / ReLU epochs to 25 %: {_fmt(ratio)}x (paper: {PAPER_RATIO:g}x)"
    elif ratio["lower_bounds"]:
        least = min(b["at_least"] for b in ratio["lower_bounds"])
        title = f"tanh / ReLU epochs to 25 %: > {least:.1f}x, tanh capped (paper: {PAPER_RATIO:g}x)"
    else:
        title = "ReLU vs tanh"
    ax.set(xlabel="epochs", ylabel="training error rate", ylim=(0, 0.8), xlim=(0, top + 0.5), title=title)
    ax.legend(fontsize=8, loc="lower left")
    maps = {"relu": plt.cm.Blues, "tanh": plt.cm.Reds}
    for act, (_, line, label) in styles.items():
        runs = sorted(results["sweep"][act]["runs"], key=lambda r: r["lr"])
        for i, r in enumerate(runs):
            chosen = r["lr"] == results["sweep"][act]["chosen_lr"]
            reached = f"{r['epochs_to_25']:.1f} epochs" if r["epochs_to_25"] is not None else \
                f"not in {r['epochs_trained']}"
            ax_sweep.plot(range(1, len(r["train_error"]) + 1), r["train_error"], line,
                          color=maps[act](0.35 + 0.6 * i / max(len(runs) - 1, 1)), lw=2.2 if chosen else 1.1,
                          label=f"{label} lr {r['lr']:g}: {reached}" + (" (chosen)" if chosen else ""))
    ax_sweep.axhline(TARGET, color="grey", lw=0.8, ls=":")
    ax_sweep.set(xlabel="epochs", ylabel="training error rate", ylim=(0, 0.8),
                 title="the learning-rate sweep, seed 0")
    ax_sweep.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    by_threshold = results.get("ratio_by_threshold", {})
    points = [(100 * float(t), r) for t, r in sorted(by_threshold.items(), key=lambda kv: -float(kv[0])) if r["n"]]
    if points:
        xs = [x for x, _ in points]
        ax_ratio.plot(xs, [r["mean"] for _, r in points], "o-", color="C2", label="ours, mean over seed pairs")
        for x, r in points:
            if r["interval"]:
                ax_ratio.plot([x, x], r["interval"], color="C2", lw=1.2)
            ax_ratio.plot([x] * len(r["values"]), r["values"], ".", color="grey", ms=4)
        ax_ratio.plot([], [], color="C2", lw=1.2, label="95 % interval over seeds")
        ax_ratio.plot([], [], ".", color="grey", label="each seed pair")
        ax_ratio.plot([100 * TARGET], [PAPER_RATIO], "D", color="#d03030", ms=7, label="the paper (25 %)")
        ax_ratio.invert_xaxis()
        ax_ratio.axhline(1, color="grey", lw=0.8, ls=":")
        ax_ratio.set(xlabel="training error threshold (%)", ylabel="tanh epochs / ReLU epochs",
                     title="the ratio where it is read",
                     ylim=(0, max(PAPER_RATIO, *(r["mean"] for _, r in points)) + 1))
        ax_ratio.legend(fontsize=7, loc="upper left")
    else:
        ax_ratio.set_axis_off()
    budget = results["budget"]
    fig.suptitle(f"Figure 1 on CIFAR-10, {len(results['seeds'])} seeds (and the sweep's seed 0), "
                 f"budget {budget['name']}"
                 + (" (reduced)" if budget["reduced"] else ""), fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
