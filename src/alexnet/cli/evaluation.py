"""Commands that use a trained network: evaluate, predict, export, and import-caffe (Caffe's trained AlexNet
as weights the others take)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alexnet.cli.common import Parents, add_command, options, print_result
from alexnet.errors import require


def _evaluate(args: argparse.Namespace) -> int:
    """top-1 / top-5 error of a checkpoint, or of an ensemble of several.

    Centre crop by default; --ten-crop averages the softmax over the four corners, the centre and their reflections
    (Section 4.1). Several checkpoints average their softmax (Section 6's ensembles). Exact under torchrun: every image
    counted once.

    example: alexnet evaluate runs/demo/checkpoints/best.pt --data STORE --ten-crop
    """
    from alexnet.evaluate import evaluate_checkpoints, format_evaluation

    result = evaluate_checkpoints(args.checkpoints, args.data, split=args.split, ten_crop=args.ten_crop,
                                  batch_size=args.batch_size, precision=args.precision, device=args.device,
                                  per_class_csv=args.per_class_csv, progress=not args.json)
    if result.pop("is_main"):
        print_result(result, args.json, format_evaluation(result))
    return 0


def add_evaluate(sub, shared: Parents) -> None:
    own = options()
    own.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                     help="one checkpoint, or several to average (an ensemble)")
    own.add_argument("--data", required=True, metavar="STORE", help="prepared store (path or name)")
    own.add_argument("--split", default=None, help="split to evaluate (default: val, or test)")
    own.add_argument("--ten-crop", action="store_true", help="average the softmax over the ten crops")
    own.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    own.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="arithmetic")
    p = add_command(sub, "evaluate", parents=[own, shared.device], func=_evaluate)
    p.add_argument("--per-class-csv", default=None, metavar="CSV", help="write per-class accuracy here")
    # Not the shared --json: its help says what the JSON adds to the text.
    p.add_argument("--json", action="store_true", help="print JSON (with per-class accuracy)")


def _predict(args: argparse.Namespace) -> int:
    """the most probable classes, with names, for image files.

    Each image is scaled to the training store's size (shorter side), centre-cropped and normalised as in training.
    --ensemble adds checkpoints whose softmax is averaged.

    example: alexnet predict runs/demo/checkpoints/best.pt photo.jpg --ensemble other.pt --top 3
    """
    from alexnet.evaluate import format_predictions, predict_files

    if args.figure:
        require("matplotlib", "plots", "alexnet predict --figure")
    checkpoints = [args.checkpoint, *args.ensemble]
    results = predict_files(checkpoints, args.images, ten_crop=args.ten_crop, top=args.top, device=args.device)
    human = format_predictions(results)
    if args.figure:
        from alexnet.analysis.predictions import predict_figure

        drawn = predict_figure(checkpoints, args.images, args.figure, results, ten_crop=args.ten_crop)
        human += f"\nfigure: {drawn['figure']}"
    print_result(results, args.json, human)
    return 0


def add_predict(sub, shared: Parents) -> None:
    own = options()
    own.add_argument("checkpoint", help="checkpoint (.pt) of a trained network")
    own.add_argument("images", nargs="+", metavar="IMAGE", help="image files, any format")
    own.add_argument("--ensemble", action="append", default=[], metavar="CHECKPOINT",
                     help="another checkpoint to average with the first (repeatable)")
    own.add_argument("--ten-crop", action="store_true", help="average the softmax over the ten crops")
    own.add_argument("--top", type=int, default=5, help="classes shown per image")
    own.add_argument("--figure", default=None, metavar="PNG",
                     help="also draw Figure 4 (left): the images with their top classes as bars, the true class "
                          "in red when the image's folder names it; NAME.json beside it describes the figure")
    add_command(sub, "predict", parents=[own, shared.device, shared.json], func=_predict)


def _export(args: argparse.Namespace) -> int:
    """write a checkpoint as a pretrained folder, its weights as safetensors, or the network as ONNX.

    A pretrained folder (model.safetensors with the mean image inside, config.json, a model card README.md) is what
    alexnet.from_pretrained and torch.hub load. Safetensors carry the model name, classes and config as metadata;
    ONNX takes normalised crops and returns logits; beside either the training store's mean image as NAME.mean.npy.

    example: alexnet export runs/demo/checkpoints/best.pt --format pretrained --out alexnet-imagenette
    """
    if args.format == "pretrained":
        from alexnet.pretrained import save_pretrained

        folder = save_pretrained(args.checkpoint, args.out or Path(args.checkpoint).with_suffix(""))
        print_result({"path": str(folder)}, args.json, str(folder))
        return 0
    from alexnet.export import export

    path = export(args.checkpoint, args.format, args.out)
    print_result({"path": str(path), "mean": str(path.with_suffix(".mean.npy"))}, args.json, str(path))
    return 0


def add_export(sub, shared: Parents) -> None:
    own = options()
    own.add_argument("checkpoint", help="checkpoint (.pt) to export")
    own.add_argument("--format", choices=["pretrained", "safetensors", "onnx"], required=True, help="what to write")
    own.add_argument("--out", default=None, help="output folder or file (default: beside the checkpoint)")
    add_command(sub, "export", parents=[own, shared.json], func=_export)


def _import_caffe(args: argparse.Namespace) -> int:
    """Caffe's bvlc_alexnet.caffemodel as a paper-shaped network of this package.

    Reads the Caffe file without Caffe (both protobuf layouts), maps every layer by name into alexnet_caffe (227-pixel
    input, Caffe's LRN constants across both groups, BGR weights turned to RGB) and writes WEIGHTS.safetensors with
    NAME.mean.npy beside it, which predict, evaluate, kernels, features, retrieve and codes take. Get the file (about
    233 MB) from the Caffe model zoo: http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel.

    example: alexnet import-caffe bvlc_alexnet.caffemodel --out bvlc_alexnet.safetensors
    """
    from alexnet.caffe import format_import, import_caffe

    result = import_caffe(args.caffemodel, args.out, synset_words=args.synset_words, mean=args.mean)
    print_result(result, args.json, format_import(result))
    return 0


def add_import_caffe(sub, shared: Parents) -> None:
    own = options()
    own.add_argument("caffemodel", help="the .caffemodel file")
    own.add_argument("--out", required=True, metavar="WEIGHTS.safetensors", help="weights file to write")
    own.add_argument("--synset-words", default=None, metavar="TXT",
                     help="Caffe's synset_words.txt (default: the ILSVRC-2012 synsets in sorted order, Caffe's)")
    own.add_argument("--mean", default=None, metavar="BINARYPROTO|NPY",
                     help="Caffe's mean image (default: its per-channel mean)")
    add_command(sub, "import-caffe", parents=[own, shared.json], func=_import_caffe)
