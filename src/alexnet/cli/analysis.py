"""Commands that look inside a trained network (Section 6.1): kernels, features, retrieve, codes, and report
(one page of a run and its analyses)."""

from __future__ import annotations

import argparse

from alexnet.cli.common import Parents, add_command, options, print_result
from alexnet.errors import require


def _feature_options(shared: Parents) -> argparse.ArgumentParser:
    """The checkpoint and store that features, retrieve and codes run fc7 over, and how."""
    head = options()
    head.add_argument("checkpoint", help="checkpoint (.pt), or weights exported / imported (.safetensors)")
    head.add_argument("--data", required=True, metavar="STORE", help="prepared store (path or name)")
    head.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                      help="arithmetic of the forward pass (bf16: about twice as fast on recent CPUs)")
    return options(head, shared.device, shared.json)


def _kernels(args: argparse.Namespace) -> int:
    """Figure 3: the first layer's kernels, one block per tower, and their colour share.

    Draws the conv1 kernels (each scaled to its own range) and measures, per tower, the share of the kernels' energy
    outside the grey axis of RGB: 0 for kernels that see only luminance, 1 for pure colour, 2/3 for random weights.
    Section 6.1 saw one tower colour-agnostic, the other colour-specific.

    example: alexnet kernels runs/demo-TIME/checkpoints/best.pt --out kernels.png
    """
    require("matplotlib", "plots", "alexnet kernels")
    from alexnet.analysis.kernels import write_kernels

    info = write_kernels(args.checkpoint, args.out)
    print_result(info, args.json, info["text"])
    return 0


def add_kernels(sub, shared: Parents) -> None:
    p = add_command(sub, "kernels", func=_kernels)
    p.add_argument("checkpoint", help="checkpoint (.pt) of a trained network")
    p.add_argument("--out", default=None,
                   help="PNG to write (default: kernels.png in the run's analysis folder, or STEM.analysis/ "
                        "beside a file outside a run)")
    # Not the shared --json: its help says what the JSON adds to the text.
    p.add_argument("--json", action="store_true", help="print JSON, per-kernel shares included")


def _features(args: argparse.Namespace) -> int:
    """fc7 activations (after ReLU) of every image of a split, float16, memory-mapped.

    The 4096-d last hidden layer of Section 6.1, centre crop, one row per image in the split's order; NAME.json beside
    the .npy holds file names, labels and classes. Computed once: a later call with the same checkpoint, store, split
    and precision reuses the file. Load it with numpy.load(PATH, mmap_mode='r').

    example: alexnet features runs/demo-TIME/checkpoints/best.pt --data imagenette --split train
    """
    from alexnet.analysis.features import compute_features, format_features

    found = compute_features(args.checkpoint, args.data, split=args.split, out=args.out, batch_size=args.batch_size,
                             precision=args.precision, device=args.device, progress=not args.json)
    result = {"path": str(found.path), "shape": list(found.vectors.shape), "dtype": "float16",
              "reused": found.reused, "description": str(found.path.with_suffix(".json"))}
    print_result(result, args.json, format_features(found))
    return 0


def add_features(sub, shared: Parents) -> None:
    p = add_command(sub, "features", parents=[_feature_options(shared)], func=_features)
    p.add_argument("--split", default=None, help="split (default: train)")
    p.add_argument("--out", default=None, metavar="NPY",
                   help="file to write (default: the analysis folder's features-STORE-SPLIT.npy)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")


def _retrieve(args: argparse.Namespace) -> int:
    """Figure 4 (right): the training images nearest to a query in fc7 space.

    For each query (an index into the validation split, or an image file), the k training images whose fc7 vectors are
    nearest in Euclidean distance, drawn as a grid (green: same class as the query). --eval instead measures precision@k
    over the whole validation split, for fc7 and for raw pixels.

    example: alexnet retrieve runs/demo-TIME/checkpoints/best.pt --data imagenette --query 12 --query photo.jpg
    """
    require("matplotlib", "plots", "alexnet retrieve")
    from alexnet.analysis import retrieval

    if args.eval:
        result = retrieval.evaluate_retrieval(args.checkpoint, args.data, k=args.k, precision=args.precision,
                                              device=args.device, progress=not args.json)
        print_result(result, args.json, retrieval.format_evaluation(result))
        return 0
    result = retrieval.retrieve(args.checkpoint, args.data, queries=args.query, k=args.k, out=args.out,
                                precision=args.precision, device=args.device, progress=not args.json)
    print_result(result, args.json, retrieval.format_retrieval(result))
    return 0


def add_retrieve(sub, shared: Parents) -> None:
    p = add_command(sub, "retrieve", parents=[_feature_options(shared)], func=_retrieve)
    p.add_argument("--query", action="append", default=None, metavar="INDEX|FILE",
                   help="validation-split index or image file (repeatable; default: 5 images of 5 classes)")
    p.add_argument("--k", type=int, default=6, help="neighbours per query")
    p.add_argument("--out", default=None, metavar="PNG", help="figure (default: the analysis folder's retrieval.png)")
    p.add_argument("--eval", action="store_true", help="precision@1 and @k of fc7 vs pixels over the validation split")


def _codes(args: argparse.Namespace) -> int:
    """binary codes of fc7 from an auto-encoder, searched by Hamming distance (Section 6.1).

    train: one auto-encoder per code length on the training split's fc7 vectors (saved in the analysis folder). eval:
    precision@k over the validation split for each code length, against codes from random hyperplanes and Euclidean
    search on fc7 and on pixels, with bytes per image, queries per second and a plot of precision against bits.

    example: alexnet codes train runs/demo-TIME/checkpoints/best.pt --data imagenette && alexnet codes eval ...
    """
    require("matplotlib", "plots", "alexnet codes")
    from alexnet.analysis import codes

    run = codes.train_codes if args.action == "train" else codes.evaluate_codes
    extra = {"epochs": args.epochs, "seed": args.seed} if args.action == "train" else {"k": args.k}
    result = run(args.checkpoint, args.data, bits=tuple(args.bits), precision=args.precision, device=args.device,
                 progress=not args.json, **extra)
    print_result(result, args.json, codes.format_codes(result))
    return 0


def add_codes(sub, shared: Parents) -> None:
    action = options()  # the first positional, before the checkpoint
    action.add_argument("action", choices=["train", "eval"], help="train the auto-encoders, or measure the codes")
    p = add_command(sub, "codes", parents=[action, _feature_options(shared)], func=_codes)
    p.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128, 256], help="code lengths")
    p.add_argument("--epochs", type=int, default=10, help="train: passes over the training vectors")
    p.add_argument("--seed", type=int, default=0, help="train: seed of the weights and batches")
    p.add_argument("--k", type=int, default=6, help="eval: neighbours per query")


def _report(args: argparse.Namespace) -> int:
    """one self-contained HTML page for a run folder.

    Config, curves, final metrics beside the paper's, environment, and every analysis in the run's analysis folder
    (kernels, predictions, retrieval, codes). Images are embedded: the page needs no network and no other file.

    example: alexnet report runs/demo-TIME --open
    """
    require("matplotlib", "plots", "alexnet report")
    from alexnet.analysis.report import open_report, write_report

    path = write_report(args.run_dir, args.out)
    opened = open_report(path) if args.open else False
    print_result({"path": str(path), "opened": opened}, args.json, str(path))
    return 0


def add_report(sub, shared: Parents) -> None:
    own = options()
    own.add_argument("run_dir", help="run folder")
    own.add_argument("--out", default=None, help="HTML file (default: RUN_DIR/report.html)")
    own.add_argument("--open", action="store_true", help="open it in the default browser")
    add_command(sub, "report", parents=[own, shared.json], func=_report)
