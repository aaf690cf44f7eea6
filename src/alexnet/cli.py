"""`alexnet <command>`: parses arguments and calls library functions; nothing else lives here.

Importing this module does not import torch: each command imports what it runs, so `alexnet --help`,
`--version` and `config show` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from pathlib import Path

from alexnet import __version__
from alexnet.allocator import reexec_with_allocator
from alexnet.config import Config, list_presets, load_config, parse_override, to_toml
from alexnet.errors import USER_ERRORS
from alexnet.rundir import RunPaths

DESCRIPTION = """\
AlexNet as Krizhevsky, Sutskever and Hinton published it (NIPS 2012): the two-tower network with
local response normalisation, its data pipeline, training recipe and evaluation, on PyTorch.

Start with:
  alexnet demo                                    train on Imagenette in 15 minutes on a laptop CPU
  alexnet prepare DATASET --out STORE             decode a data set once into a 256x256 store
  alexnet train --config paper --data STORE       train with the paper's recipe

Then evaluate, predict, finetune or export a checkpoint, and look inside it (kernels, features, retrieve,
codes, report). `alexnet COMMAND --help` explains each.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the descriptions' line breaks and shows each option's default."""


def _add(sub, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=summary, description=f"{summary}.\n\n{description}", epilog=f"example:\n  {example}",
        formatter_class=_Formatter,
    )


def _print(result: object, as_json: bool, human: str) -> None:
    print(json.dumps(result, indent=2) if as_json else human)


def _summary(args: argparse.Namespace) -> int:
    from alexnet.models.summary import format_summary, summarize

    rows, totals = summarize(args.model, input_size=args.input_size, num_classes=args.num_classes)
    _print({"model": args.model, "layers": rows, "totals": totals}, args.json,
           format_summary(args.model, rows, totals))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from alexnet.data.prepare import format_prepare_summary, prepare_store

    summary = prepare_store(args.source, args.out, size=args.size, workers=args.workers,
                            encoding=args.encoding, max_pixels=args.max_pixels, progress=not args.json)
    _print(summary, args.json, format_prepare_summary(summary))
    return 0


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
    _print(result, as_json, human)
    return 0


def _train(args: argparse.Namespace) -> int:
    from alexnet.train import fit

    config = _config_from_args(args)
    summary = fit(config, _run_dir(args, args.config or "paper"), resume=args.resume,
                  progress=not args.no_progress)
    return _report_fit(summary, args.json)


def _finetune(args: argparse.Namespace) -> int:
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


def _evaluate(args: argparse.Namespace) -> int:
    from alexnet.evaluate import evaluate_checkpoints, format_evaluation

    result = evaluate_checkpoints(args.checkpoints, args.data, split=args.split, ten_crop=args.ten_crop,
                                  batch_size=args.batch_size, precision=args.precision, device=args.device,
                                  per_class_csv=args.per_class_csv, progress=not args.json)
    if result.pop("is_main"):
        _print(result, args.json, format_evaluation(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from alexnet.evaluate import format_predictions, predict_files

    checkpoints = [args.checkpoint, *args.ensemble]
    results = predict_files(checkpoints, args.images, ten_crop=args.ten_crop, top=args.top, device=args.device)
    human = format_predictions(results)
    if args.figure:
        from alexnet.analysis.predictions import predict_figure

        drawn = predict_figure(checkpoints, args.images, args.figure, results, ten_crop=args.ten_crop)
        human += f"\nfigure: {drawn['figure']}"
    _print(results, args.json, human)
    return 0


def _export(args: argparse.Namespace) -> int:
    from alexnet.export import export

    path = export(args.checkpoint, args.format, args.out)
    _print({"path": str(path), "mean": str(path.with_suffix(".mean.npy"))}, args.json, str(path))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from alexnet.demo import run_demo

    return run_demo(run_dir=args.run_dir, minutes=args.minutes, as_json=args.json)


def _kernels(args: argparse.Namespace) -> int:
    from alexnet.analysis.kernels import write_kernels

    info = write_kernels(args.checkpoint, args.out)
    _print(info, args.json, info["text"])
    return 0


def _features(args: argparse.Namespace) -> int:
    from alexnet.analysis.features import compute_features, format_features

    found = compute_features(args.checkpoint, args.data, split=args.split, out=args.out, batch_size=args.batch_size,
                             precision=args.precision, device=args.device, progress=not args.json)
    result = {"path": str(found.path), "shape": list(found.vectors.shape), "dtype": "float16",
              "reused": found.reused, "description": str(found.path.with_suffix(".json"))}
    _print(result, args.json, format_features(found))
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    from alexnet.analysis import retrieval

    if args.eval:
        result = retrieval.evaluate_retrieval(args.checkpoint, args.data, k=args.k, precision=args.precision,
                                              device=args.device, progress=not args.json)
        _print(result, args.json, retrieval.format_evaluation(result))
        return 0
    result = retrieval.retrieve(args.checkpoint, args.data, queries=args.query, k=args.k, out=args.out,
                                precision=args.precision, device=args.device, progress=not args.json)
    _print(result, args.json, retrieval.format_retrieval(result))
    return 0


def _codes(args: argparse.Namespace) -> int:
    from alexnet.analysis import codes

    run = codes.train_codes if args.action == "train" else codes.evaluate_codes
    options = {"epochs": args.epochs, "seed": args.seed} if args.action == "train" else {"k": args.k}
    result = run(args.checkpoint, args.data, bits=tuple(args.bits), precision=args.precision, device=args.device,
                 progress=not args.json, **options)
    _print(result, args.json, codes.format_codes(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    from alexnet.analysis.report import open_report, write_report

    path = write_report(args.run_dir, args.out)
    opened = open_report(path) if args.open else False
    _print({"path": str(path), "opened": opened}, args.json, str(path))
    return 0


def _import_caffe(args: argparse.Namespace) -> int:
    from alexnet.caffe import format_import, import_caffe

    result = import_caffe(args.caffemodel, args.out, synset_words=args.synset_words, mean=args.mean)
    _print(result, args.json, format_import(result))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from alexnet.benchmark import run_benchmark
    from alexnet.demo import demo_store

    store = args.store or demo_store()
    result = run_benchmark(store, rounds=args.rounds, e2e_steps=args.steps,
                           log=(lambda line: print(line, file=sys.stderr)) if args.json else print)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from alexnet.experiments import run
    from alexnet.experiments.runner import ExperimentInterrupted
    from alexnet.experiments.table import write_table

    if args.name == "table":
        path = write_table(args.out)
        _print({"path": str(path)}, args.json, str(path))
        return 0
    overrides = [*args.set, *([f"data.store={args.data}"] if args.data else [])]
    command = " ".join(["alexnet", "experiment", args.name, "--seeds", str(args.seeds), "--budget", args.budget,
                        *(["--device", args.device] if args.device != "auto" else []),
                        *(f"--set {o}" for o in args.set), *(["--data", args.data] if args.data else [])])
    stream = sys.stderr if args.json else sys.stdout

    def log(line: str) -> None:
        print(line, file=stream, flush=True)

    try:
        # With --json, stdout holds only the results: the runs' own epoch lines go to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            results = run(args.name, seeds=args.seeds, budget=args.budget, device=args.device,
                          runs_dir=args.runs_dir, out=args.out, overrides=tuple(overrides), command=command,
                          progress=not args.no_progress, log=log)
    except ExperimentInterrupted as err:
        print(err, file=sys.stderr)
        return 130
    rows = results["table"] if isinstance(results["table"], list) else [results["table"]]
    human = "\n".join([
        *(f"{row['claim']}: {row['ours']}\n  paper: {row['paper']}" for row in rows),
        f"  {rows[0]['setting']}; {results['wall_time_s'] / 60:.1f} min of training",
        f"  results {Path(args.out) / 'results' / Path(results['plot']).with_suffix('.json')}, plot beside it",
        f"  table   {results['table_path']}",
    ])
    _print(results, args.json, human)
    return 0


def _info(args: argparse.Namespace) -> int:
    from alexnet.info import environment, format_environment

    env = environment(args.device)
    _print(env, args.json, format_environment(env))
    return 0


def _config_show(args: argparse.Namespace) -> int:
    source = args.source
    run_config = RunPaths(Path(source)).config
    config = load_config(run_config if run_config.is_file() else source, args.set)
    print(to_toml(config), end="")
    return 0


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="PRESET|TOML",
                   help=f"preset ({', '.join(list_presets())}) or TOML file; default: paper, or the run's own "
                        "config.toml with --resume")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set run.epochs=10 (repeatable)")
    p.add_argument("--data", default=None, metavar="STORE",
                   help="prepared store (path, or name under $ALEXNET_CACHE/stores); sets data.store")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's latest checkpoint (start fresh if it has none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when there is one)")


def _add_training_commands(sub) -> None:
    p = _add(sub, "train", "train a network from a config (the paper's recipe by default)",
             "Trains in a run folder (config.toml, checkpoints/latest.pt and best.pt, metrics.jsonl, curves.png, "
             "TensorBoard events). The class count comes from the store. A killed run continues exactly with "
             "--resume; under torchrun the batch is split over the processes.",
             "alexnet train --config demo --data ~/.cache/alexnet/stores/imagenette --set run.epochs=3")
    _add_run_arguments(p)
    p.add_argument("--model-parallel", type=int, choices=[1, 2], default=None,
                   help="2: the paper's two towers on two devices (Figure 2)")
    p.set_defaults(func=_train)

    p = _add(sub, "finetune", "start from a checkpoint, replace the classifier, train on a new label set",
             "The network and its input (crop, normalisation, input scale) come from the checkpoint; the "
             "recipe (optimiser, schedule, budget) from --config; fc8 is replaced for the new store's classes "
             "and every layer trains. --set model.KEY=VALUE changes the network on purpose (an error if the "
             "weights do not fit it).",
             "alexnet finetune runs/demo/checkpoints/best.pt --config demo --data STORE --set run.epochs=2")
    p.add_argument("checkpoint", help="checkpoint (.pt) or exported weights (.safetensors) to start from")
    _add_run_arguments(p)
    p.set_defaults(func=_finetune)

    p = _add(sub, "evaluate", "top-1 / top-5 error of a checkpoint, or of an ensemble of several",
             "Centre crop by default; --ten-crop averages the softmax over the four corners, the centre and "
             "their reflections (Section 4.1). Several checkpoints average their softmax (Section 6's "
             "ensembles). Exact under torchrun: every image counted once.",
             "alexnet evaluate runs/demo/checkpoints/best.pt --data STORE --ten-crop")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="one checkpoint, or several to average (an ensemble)")
    p.add_argument("--data", required=True, metavar="STORE", help="prepared store (path or name)")
    p.add_argument("--split", default=None, help="split to evaluate (default: val, or test)")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the ten crops")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="arithmetic")
    _add_device(p)
    p.add_argument("--per-class-csv", default=None, metavar="CSV", help="write per-class accuracy here")
    p.add_argument("--json", action="store_true", help="print JSON (with per-class accuracy)")
    p.set_defaults(func=_evaluate)

    p = _add(sub, "predict", "the most probable classes, with names, for image files",
             "Each image is scaled to the training store's size (shorter side), centre-cropped and "
             "normalised as in training. --ensemble adds checkpoints whose softmax is averaged.",
             "alexnet predict runs/demo/checkpoints/best.pt photo.jpg --ensemble other.pt --top 3")
    p.add_argument("checkpoint", help="checkpoint (.pt) of a trained network")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, any format")
    p.add_argument("--ensemble", action="append", default=[], metavar="CHECKPOINT",
                   help="another checkpoint to average with the first (repeatable)")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the ten crops")
    p.add_argument("--top", type=int, default=5, help="classes shown per image")
    p.add_argument("--figure", default=None, metavar="PNG",
                   help="also draw Figure 4 (left): the images with their top classes as bars, the true class "
                        "in red when the image's folder names it; NAME.json beside it describes the figure")
    _add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_predict)

    p = _add(sub, "export", "write a checkpoint's weights as safetensors, or the network as ONNX",
             "Safetensors carry the model name, classes and config as metadata; ONNX takes normalised crops "
             "and returns logits. The training store's mean image is written beside either as NAME.mean.npy.",
             "alexnet export runs/demo/checkpoints/best.pt --format safetensors --out alexnet.safetensors")
    p.add_argument("checkpoint", help="checkpoint (.pt) to export")
    p.add_argument("--format", choices=["safetensors", "onnx"], required=True, help="what to write")
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=_export)

    p = _add(sub, "demo", "prepare Imagenette, train the paper's network on it within a budget, evaluate",
             "Finds imagenette2-224 under $ALEXNET_DATA, prepares it once, trains the paper's network with "
             "the demo recipe and reports centre and ten-crop accuracy, all inside --minutes of wall time.",
             "alexnet demo --minutes 15")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/demo-<time>)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-time budget of the whole demo")
    p.add_argument("--json", action="store_true", help="end with the results as JSON")
    p.set_defaults(func=_demo)


def _add_feature_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint (.pt), or weights exported / imported (.safetensors)")
    p.add_argument("--data", required=True, metavar="STORE", help="prepared store (path or name)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="arithmetic of the forward pass (bf16: about twice as fast on recent CPUs)")
    _add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON (progress bars off)")


def _add_analysis_commands(sub) -> None:
    p = _add(sub, "features", "fc7 activations (after ReLU) of every image of a split, float16, memory-mapped",
             "The 4096-d last hidden layer of Section 6.1, centre crop, one row per image in the split's order; "
             "NAME.json beside the .npy holds file names, labels and classes. Computed once: a later call with "
             "the same checkpoint, store, split and precision reuses the file. Load it with "
             "numpy.load(PATH, mmap_mode='r').",
             "alexnet features runs/demo-TIME/checkpoints/best.pt --data imagenette --split train")
    _add_feature_options(p)
    p.add_argument("--split", default=None, help="split (default: train)")
    p.add_argument("--out", default=None, metavar="NPY",
                   help="file to write (default: the analysis folder's features-STORE-SPLIT.npy)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.set_defaults(func=_features)

    p = _add(sub, "retrieve", "Figure 4 (right): the training images nearest to a query in fc7 space",
             "For each query (an index into the validation split, or an image file), the k training images whose "
             "fc7 vectors are nearest in Euclidean distance, drawn as a grid (green: same class as the query). "
             "--eval instead measures precision@k over the whole validation split, for fc7 and for raw pixels.",
             "alexnet retrieve runs/demo-TIME/checkpoints/best.pt --data imagenette --query 12 --query photo.jpg")
    _add_feature_options(p)
    p.add_argument("--query", action="append", default=None, metavar="INDEX|FILE",
                   help="validation-split index or image file (repeatable; default: 5 images of 5 classes)")
    p.add_argument("--k", type=int, default=6, help="neighbours per query")
    p.add_argument("--out", default=None, metavar="PNG", help="figure (default: the analysis folder's retrieval.png)")
    p.add_argument("--eval", action="store_true", help="precision@1 and @k of fc7 vs pixels over the validation split")
    p.set_defaults(func=_retrieve)

    p = _add(sub, "codes", "binary codes of fc7 from an auto-encoder, searched by Hamming distance (Section 6.1)",
             "train: one auto-encoder per code length on the training split's fc7 vectors (saved in the analysis "
             "folder). eval: precision@k over the validation split for each code length, against codes from "
             "random hyperplanes and Euclidean search on fc7 and on pixels, with bytes per image, queries per "
             "second and a plot of precision against bits.",
             "alexnet codes train runs/demo-TIME/checkpoints/best.pt --data imagenette && alexnet codes eval ...")
    p.add_argument("action", choices=["train", "eval"], help="train the auto-encoders, or measure the codes")
    _add_feature_options(p)
    p.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128, 256], help="code lengths")
    p.add_argument("--epochs", type=int, default=10, help="train: passes over the training vectors")
    p.add_argument("--seed", type=int, default=0, help="train: seed of the weights and batches")
    p.add_argument("--k", type=int, default=6, help="eval: neighbours per query")
    p.set_defaults(func=_codes)

    p = _add(sub, "report", "one self-contained HTML page for a run folder",
             "Config, curves, final metrics beside the paper's, environment, and every analysis in the run's "
             "analysis folder (kernels, predictions, retrieval, codes). Images are embedded: the page needs no "
             "network and no other file.",
             "alexnet report runs/demo-TIME --open")
    p.add_argument("run_dir", help="run folder")
    p.add_argument("--out", default=None, help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--open", action="store_true", help="open it in the default browser")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_report)

    p = _add(sub, "import-caffe", "Caffe's bvlc_alexnet.caffemodel as a paper-shaped network of this package",
             "Reads the Caffe file without Caffe (both protobuf layouts), maps every layer by name into "
             "alexnet_caffe (227-pixel input, Caffe's LRN constants across both groups, BGR weights turned to "
             "RGB) and writes WEIGHTS.safetensors with NAME.mean.npy beside it, which predict, evaluate, kernels, "
             "features, retrieve and codes take. Get the file (about 233 MB) from the Caffe model zoo: "
             "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel.",
             "alexnet import-caffe bvlc_alexnet.caffemodel --out bvlc_alexnet.safetensors")
    p.add_argument("caffemodel", help="the .caffemodel file")
    p.add_argument("--out", required=True, metavar="WEIGHTS.safetensors", help="weights file to write")
    p.add_argument("--synset-words", default=None, metavar="TXT",
                   help="Caffe's synset_words.txt (default: the ILSVRC-2012 synsets in sorted order, Caffe's)")
    p.add_argument("--mean", default=None, metavar="BINARYPROTO|NPY",
                   help="Caffe's mean image (default: its per-channel mean)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_import_caffe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "summary", "per-layer table of a network: output shape, parameters, MACs, neurons",
             "Any registered model: alexnet (the paper's), its ablations (alexnet_nolrn, alexnet_onetower, "
             "...), alexnet_owt (torchvision's) and the CIFAR-10 nets (cifar_relu, cifar_tanh, cifar_lrn).",
             "alexnet summary --model alexnet_onetower")
    p.add_argument("--model", default="alexnet", help="registered model name")
    p.add_argument("--input-size", type=int, default=None, help="input side (default: 224; 32 for CIFAR nets)")
    p.add_argument("--num-classes", type=int, default=1000, help="size of the last layer")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_summary)

    p = _add(sub, "prepare", "decode, resize and store a data set once (256x256, mean image, RGB PCA)",
             "Reads a folder or archive of class folders, the ILSVRC-2012 tars (a tar of per-class tars, "
             "the flat validation tar with its devkit), or CIFAR-10's batches; scales the shorter side to "
             "--size and keeps the centre square (Section 2). Unreadable files are reported and skipped. "
             "A killed prepare resumes where it stopped.",
             "alexnet prepare imagenette2-224 --out ~/.cache/alexnet/stores/imagenette")
    p.add_argument("source", help="folder or archive of images, ILSVRC tar, CIFAR-10 batches, "
                   "or a name under $ALEXNET_DATA")
    p.add_argument("--out", required=True, help="folder of the prepared store")
    p.add_argument("--size", type=int, default=256, help="shorter side scaled to this, then centre-cropped")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--encoding", choices=["raw", "jpeg"], default="raw",
                   help="shard payload: raw uint8 (fast) or JPEG (about 10x smaller)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="skip images declaring more pixels than this (default: Pillow's bomb limit)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.set_defaults(func=_prepare)

    _add_training_commands(sub)

    p = _add(sub, "config", "print a preset or a run's resolved config as TOML, to copy and edit",
             "SOURCE is a preset name, a TOML file or a run folder (its config.toml). --set applies "
             "overrides first, as train would.",
             "alexnet config show demo --set run.epochs=3 > my.toml && alexnet train --config my.toml")
    p.add_argument("action", choices=["show"], help="what to do (show)")
    p.add_argument("source", nargs="?", default="paper", metavar="PRESET|TOML|RUN_DIR",
                   help="the config to print")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    p.set_defaults(func=_config_show)

    p = _add(sub, "kernels", "Figure 3: the first layer's kernels, one block per tower, and their colour share",
             "Draws the conv1 kernels (each scaled to its own range) and measures, per tower, the share of the "
             "kernels' energy outside the grey axis of RGB: 0 for kernels that see only luminance, 1 for pure "
             "colour, 2/3 for random weights. Section 6.1 saw one tower colour-agnostic, the other colour-specific.",
             "alexnet kernels runs/demo-TIME/checkpoints/best.pt --out kernels.png")
    p.add_argument("checkpoint", help="checkpoint (.pt) of a trained network")
    p.add_argument("--out", default=None,
                   help="PNG to write (default: kernels.png in the run's analysis folder, or STEM.analysis/ "
                        "beside a file outside a run)")
    p.add_argument("--json", action="store_true", help="print JSON, per-kernel shares included")
    p.set_defaults(func=_kernels)
    _add_analysis_commands(sub)

    p = _add(sub, "benchmark", "ours vs torchvision's, measured in one run on this machine",
             "Training steps (fp32, bf16) of the paper net, the paper net without LRN and torchvision's AlexNet "
             "in turn; centre and ten-crop inference; GFLOP/s against a matmul peak; our input pipeline vs "
             "torchvision's reference; the real training loop vs the model-only rate with peak anonymous "
             "memory. About 5 minutes on the 2-core development machine, twice that on one half as fast.",
             "alexnet benchmark --json > bench.json")
    p.add_argument("--store", default=None, help="prepared Imagenette store (default: the demo's, prepared once)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (the median is kept)")
    p.add_argument("--steps", type=int, default=200, help="steps of the real training loop")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress on stderr)")
    p.set_defaults(func=_benchmark)

    p = _add(sub, "experiment", "reproduce one of the paper's claims over seeds, or write the table of results",
             "Runs every variant x seed of experiment NAME (relu-vs-tanh: Figure 1; lrn-cifar: Section 3.3's "
             "13 % / 11 % CIFAR-10 net with and without LRN; ablations: the paper's "
             "ablations on Imagenette; time-to-accuracy: minutes to 60 and 70 % top-1; paper-recipe: Section 5's "
             "recipe against the demo's), one run folder each, "
             "unattended and resumable: run the same command again after a kill and finished runs are kept, the "
             "unfinished one continues from its checkpoint. Writes OUT/results/NAME.json (config, code version, "
             "machine, per-seed numbers, mean and standard deviation, wall time) and NAME.png, then regenerates "
             "OUT/README.md, the table of every results file. NAME table only regenerates the table.",
             "alexnet experiment relu-vs-tanh --seeds 3 --budget cpu && alexnet experiment table")
    p.add_argument("name", metavar="NAME",
                   help="relu-vs-tanh, lrn-cifar, ablations, time-to-accuracy, paper-recipe, or table")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every variant")
    p.add_argument("--budget", default="cpu",
                   help="cpu (sized for a 2-core CPU, reduced); also, by experiment: cpu-long, gpu, paper (full "
                        "length), smoke (tests); an unknown name lists the experiment's budgets")
    _add_device(p)
    p.add_argument("--data", default=None, metavar="STORE",
                   help="train on this prepared store (default: CIFAR-10, or Imagenette for ablations, "
                        "time-to-accuracy and paper-recipe, from $ALEXNET_DATA, prepared once)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value of every run (repeatable)")
    p.add_argument("--runs-dir", default=None, help="run folders (default: runs/experiments/NAME/BUDGET)")
    p.add_argument("--out", default="experiments", help="folder of results/ and README.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress lines on stderr)")
    p.set_defaults(func=_experiment)

    p = _add(sub, "info", "what is running: versions, CPU, device, threads, allocator, LRN path",
             "The same facts are saved in every run folder (environment.json) and benchmark result. The "
             "allocator is mimalloc (a pip wheel) unless ALEXNET_ALLOCATOR=system or LD_PRELOAD names "
             "another; the CPU LRN is the fused C++ kernel unless it cannot be built (the reason is shown).",
             "alexnet info --json")
    _add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)
    return parser


def console() -> None:
    """The `alexnet` executable: first the allocator (a re-exec, before torch loads), then the command."""
    reexec_with_allocator(sys.argv[1:])
    raise SystemExit(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `alexnet ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as err:
        # What a user can fix (bad config or input, missing data, unreadable checkpoint, a missing device,
        # a diverged run): one line and exit status 1. Anything else is a bug and keeps its traceback.
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"alexnet {args.command}: internal error (a bug in alexnet {__version__}); please report it "
              "with the traceback above", file=sys.stderr)
        return 70
