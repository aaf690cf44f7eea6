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


def build_parser() -> argparse.ArgumentParser:
    from alexnet.models import list_models

    parser = argparse.ArgumentParser(prog="alexnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("summary", help="per-layer table: output shape, parameters, MACs, neurons")
    p.add_argument("--model", default="alexnet", choices=list_models())
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_summary)

    p = sub.add_parser("prepare", help="decode, resize and store a data set once (256x256, mean image, RGB PCA)")
    p.add_argument("source", help="folder or archive of images, ILSVRC tar, CIFAR-10 batches, or a name under ALEXNET_DATA")
    p.add_argument("--out", required=True, help="folder of the prepared store")
    p.add_argument("--size", type=int, default=256, help="shorter side is scaled to this, then centre-cropped")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--encoding", choices=["raw", "jpeg"], default="raw", help="shard payload: raw uint8 or JPEG")
    p.add_argument("--max-pixels", type=int, default=None, help="skip images declaring more pixels than this")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.set_defaults(func=_prepare)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
