"""Commands that train: train (from a config), finetune (from a checkpoint) and demo (the whole path on
Imagenette within a time budget)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.cli.common import Parents, add_command, options, print_result
from alexnet.config import Config, list_presets, load_config, parse_override
from alexnet.errors import require
from alexnet.rundir import RunPaths


def _config_from_args(args: argparse.Namespace) -> Config:
    config = args.config
    if config is None:
        saved = RunPaths(Path(args.run_dir)).config if args.run_dir else None
        config = saved if args.resume and saved is not None and saved.is_file() else "paper"
    overrides = list(args.set)
    if args.data is not None:
        overrides.append(f"data.store={args.data}")
    if getattr(args, "model_parallel", None) is not None:
        overrides.append(f"run.model_parallel={args.model_parallel}")
    return load_config(config, overrides)


def _run_dir(args: argparse.Namespace, config_name: str) -> str:
    return args.run_dir or str(Path("runs") / Path(str(config_name)).stem)


def _report_fit(summary: dict, as_json: bool) -> int:
    if summary["status"] == "interrupted":
        print(f"interrupted by signal {summary['signal']} at step {summary['step']}; checkpoint saved to "
              f"{summary['latest']}; continue with --resume --run-dir {summary['run_dir']}", file=sys.stderr)
        return 128 + summary["signal"]
    result = {k: v for k, v in summary.items() if k != "signal"}
    last = summary["last"] or {}
    how = "finished" if summary["status"] == "finished" else "stopped by its budget"
    human = "\n".join([
        f"training {how} after {last.get('epoch', 0):g} epochs ({summary['step']} steps)",
        f"  validation top-1 error {100 * last.get('val_top1_error', float('nan')):.2f}%, top-5 "
        f"{100 * last.get('val_top5_error', float('nan')):.2f}% (best top-1 "
        f"{100 * summary['best_top1_error']:.2f}%)",
        f"  run folder {summary['run_dir']}",
        f"  checkpoint {summary['latest']} (best: {summary['best']})",
        f"  curves     {summary['plot']}",
    ])
    print_result(result, as_json, human)
    return 0


def _run_options(shared: Parents) -> argparse.ArgumentParser:
    """The options of a training run, which train and finetune share."""
    config = options()
    config.add_argument("--config", default=None, metavar="PRESET|TOML",
                        help=f"preset ({', '.join(list_presets())}) or TOML file; default: paper, or the run's own "
                             "config.toml with --resume")
    run = options()
    run.add_argument("--data", default=None, metavar="STORE",
                     help="prepared store (path, or name under $ALEXNET_CACHE/stores); sets data.store")
    run.add_argument("--run-dir", default=None, help="run folder (default: runs/<config name>)")
    run.add_argument("--resume", action="store_true",
                     help="continue from the run folder's latest checkpoint (start fresh if it has none)")
    return options(config, shared.set, run, shared.no_progress, shared.json)


def _train(args: argparse.Namespace) -> int:
    """train a network from a config (the paper's recipe by default).

    Trains in a run folder (config.toml, checkpoints/latest.pt and best.pt, metrics.jsonl, curves.png, TensorBoard
    events). The class count comes from the store. A killed run continues exactly with --resume; under torchrun the
    batch is split over the processes.

    example: alexnet train --config demo --data ~/.cache/alexnet/stores/imagenette --set run.epochs=3
    """
    from alexnet.train import fit

    config = _config_from_args(args)
    summary = fit(config, _run_dir(args, args.config or "paper"), resume=args.resume,
                  progress=not args.no_progress)
    return _report_fit(summary, args.json)


def add_train(sub, shared: Parents) -> None:
    p = add_command(sub, "train", parents=[_run_options(shared)], func=_train)
    p.add_argument("--model-parallel", type=int, choices=[1, 2], default=None,
                   help="2: the paper's two towers on two devices (Figure 2)")


def _finetune(args: argparse.Namespace) -> int:
    """start from a checkpoint, replace the classifier, train on a new label set.

    The network and its input (crop, normalisation, input scale) come from the checkpoint; the recipe (optimiser,
    schedule, budget) from --config; fc8 is replaced for the new store's classes and every layer trains. --set
    model.KEY=VALUE changes the network on purpose (an error if the weights do not fit it).

    example: alexnet finetune runs/demo/checkpoints/best.pt --config demo --data STORE --set run.epochs=2
    """
    from alexnet.train import finetune

    config = _config_from_args(args)
    model_overrides = {}
    for item in args.set:
        section, key, value = parse_override(item)
        if section == "model":
            model_overrides[key] = value
    run_dir = _run_dir(args, f"finetune-{args.config or 'paper'}")
    summary = finetune(config, run_dir, args.checkpoint, resume=args.resume, progress=not args.no_progress,
                       model_overrides=model_overrides)
    return _report_fit(summary, args.json)


def add_finetune(sub, shared: Parents) -> None:
    p = add_command(sub, "finetune", parents=[_run_options(shared)], func=_finetune)
    p.add_argument("checkpoint", help="checkpoint (.pt) or exported weights (.safetensors) to start from")


def _demo(args: argparse.Namespace) -> int:
    """prepare Imagenette, train the paper's network on it within a budget, evaluate.

    Finds imagenette2-224 under $ALEXNET_DATA, prepares it once, trains the paper's network with the demo recipe and
    reports centre and ten-crop accuracy, all inside --minutes of wall time.

    example: alexnet demo --minutes 15
    """
    require("matplotlib", "plots", "alexnet demo (its figures and report)")
    from alexnet.demo import run_demo

    return run_demo(run_dir=args.run_dir, minutes=args.minutes, as_json=args.json)


def add_demo(sub, shared: Parents) -> None:
    p = add_command(sub, "demo", func=_demo)
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/demo-<time>)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-time budget of the whole demo")
    # Not the shared --json: the demo prints its progress first and the JSON last.
    p.add_argument("--json", action="store_true", help="end with the results as JSON")
