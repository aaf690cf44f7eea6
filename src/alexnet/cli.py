"""`alexnet <command>`: parses arguments and calls library functions; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import sys


def _summary(args: argparse.Namespace) -> int:
    from alexnet.models.summary import format_summary, summarize

    rows, totals = summarize(args.model, input_size=args.input_size, num_classes=args.num_classes)
    if args.json:
        print(json.dumps({"model": args.model, "layers": rows, "totals": totals}, indent=2))
    else:
        print(format_summary(args.model, rows, totals))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from alexnet.data.prepare import format_prepare_summary, prepare_store

    summary = prepare_store(
        args.source,
        args.out,
        size=args.size,
        workers=args.workers,
        encoding=args.encoding,
        max_pixels=args.max_pixels,
        progress=not args.json,
    )
    print(json.dumps(summary, indent=2) if args.json else format_prepare_summary(summary))
    return 0


def _config_from_args(args: argparse.Namespace):
    from pathlib import Path

    from alexnet.config import load_config

    config = args.config
    if config is None:
        saved = Path(args.run_dir) / "config.toml" if args.run_dir else None
        config = saved if args.resume and saved is not None and saved.is_file() else "paper"
    overrides = list(args.set)
    if args.data is not None:
        overrides.append(f"data.store={args.data}")
    if getattr(args, "model_parallel", None) is not None:
        overrides.append(f"run.model_parallel={args.model_parallel}")
    return load_config(config, overrides)


def _run_dir(args: argparse.Namespace, config_name: str) -> str:
    from pathlib import Path

    return args.run_dir or str(Path("runs") / Path(str(config_name)).stem)


def _report_fit(summary: dict) -> int:
    if summary["status"] == "interrupted":
        print(f"interrupted by signal {summary['signal']} at step {summary['step']}; checkpoint saved to "
              f"{summary['latest']}; continue with --resume --run-dir {summary['run_dir']}", file=sys.stderr)
        return 128 + summary["signal"]
    print(json.dumps({k: v for k, v in summary.items() if k != "signal"}, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from alexnet.train import fit

    config = _config_from_args(args)
    return _report_fit(fit(config, _run_dir(args, args.config or "paper"), resume=args.resume,
                           progress=not args.no_progress))


def _finetune(args: argparse.Namespace) -> int:
    from alexnet.train import finetune

    config = _config_from_args(args)
    run_dir = _run_dir(args, f"finetune-{args.config or 'paper'}")
    return _report_fit(finetune(config, run_dir, args.checkpoint, resume=args.resume,
                                progress=not args.no_progress))


def _evaluate(args: argparse.Namespace) -> int:
    from alexnet.evaluate import evaluate_checkpoints, format_evaluation

    result = evaluate_checkpoints(args.checkpoints, args.data, split=args.split, ten_crop=args.ten_crop,
                                  batch_size=args.batch_size, precision=args.precision, device=args.device,
                                  per_class_csv=args.per_class_csv, progress=not args.json)
    if result.pop("is_main"):
        print(json.dumps(result, indent=2) if args.json else format_evaluation(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from alexnet.evaluate import format_predictions, predict_files

    checkpoints = [args.checkpoint, *args.ensemble]
    results = predict_files(checkpoints, args.images, ten_crop=args.ten_crop, top=args.top,
                            device=args.device)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0


def _export(args: argparse.Namespace) -> int:
    from alexnet.export import export

    print(export(args.checkpoint, args.format, args.out))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from alexnet.demo import run_demo

    return run_demo(run_dir=args.run_dir, minutes=args.minutes)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="preset name (paper, demo, cifar10) or TOML file; default: paper, or the run's own "
                        "config.toml with --resume")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set run.epochs=10 (repeatable)")
    p.add_argument("--data", default=None, metavar="STORE",
                   help="prepared store (path or name); sets data.store")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's latest checkpoint (start fresh if it has none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_training_commands(sub) -> None:
    """train, finetune, evaluate, predict, export, demo."""
    p = sub.add_parser("train", help="train a network from a config (the paper's recipe by default)")
    _add_run_arguments(p)
    p.add_argument("--model-parallel", type=int, choices=[1, 2], default=None,
                   help="2: the paper's two towers on two devices (Figure 2)")
    p.set_defaults(func=_train)

    p = sub.add_parser("finetune",
                       help="start from a checkpoint, replace the classifier, train on a new label set")
    p.add_argument("checkpoint", help="checkpoint (.pt) or weights (.safetensors) to start from")
    _add_run_arguments(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("evaluate", help="top-1/top-5 error of a checkpoint, or of an ensemble of several")
    p.add_argument("checkpoints", nargs="+", help="one checkpoint, or several to average (an ensemble)")
    p.add_argument("--data", required=True, metavar="STORE", help="prepared store (path or name)")
    p.add_argument("--split", default=None, help="split to evaluate (default: val, or test)")
    p.add_argument("--ten-crop", action="store_true",
                   help="average the softmax over the ten crops (Section 4.1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--per-class-csv", default=None, metavar="CSV", help="write per-class accuracy here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="top-5 classes with names and probabilities for image files")
    p.add_argument("checkpoint", help="checkpoint (.pt) of a trained network")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, any format")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="CHECKPOINT",
                   help="more checkpoints whose softmax is averaged with the first's")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the ten crops")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="export a checkpoint's weights (safetensors) or network (ONNX)")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=["safetensors", "onnx"], required=True)
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint)")
    p.set_defaults(func=_export)

    p = sub.add_parser("demo",
                       help="prepare Imagenette, train the paper's network on it in 15 minutes, evaluate")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/demo-<time>)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-time budget of the whole demo")
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    from alexnet.models import list_models

    parser = argparse.ArgumentParser(prog="alexnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("summary", help="per-layer table: output shape, parameters, MACs, neurons")
    p.add_argument("--model", default="alexnet", choices=list_models())
    p.add_argument("--input-size", type=int, default=None, help="default: 224 (32 for the CIFAR nets)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_summary)

    p = sub.add_parser("prepare",
                       help="decode, resize and store a data set once (256x256, mean image, RGB PCA)")
    p.add_argument("source", help="folder or archive of images, ILSVRC tar, CIFAR-10 batches, "
                   "or a name under ALEXNET_DATA")
    p.add_argument("--out", required=True, help="folder of the prepared store")
    p.add_argument("--size", type=int, default=256, help="shorter side scaled to this, then centre-cropped")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--encoding", choices=["raw", "jpeg"], default="raw",
                   help="shard payload: raw uint8 or JPEG")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="skip images declaring more pixels than this")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.set_defaults(func=_prepare)

    _add_training_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from alexnet.checkpoint import CheckpointError
    from alexnet.data.store import DataError
    from alexnet.engine import NonFiniteLossError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, CheckpointError, DataError, NonFiniteLossError) as err:
        # What a user can fix (bad config or input, missing data, unreadable checkpoint, a diverged run):
        # one line and exit status 1, no traceback.
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 1
