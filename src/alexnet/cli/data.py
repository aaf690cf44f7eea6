"""Commands that look at what training starts from: a network's shape (summary), a prepared store (prepare),
a config (config show) and the machine (info)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alexnet.cli.common import Parents, add_command, options, print_result
from alexnet.config import load_config, to_toml
from alexnet.rundir import RunPaths


def _summary(args: argparse.Namespace) -> int:
    """per-layer table of a network: output shape, parameters, MACs, neurons.

    Any registered model: alexnet (the paper's), its ablations (alexnet_nolrn, alexnet_onetower, ...), alexnet_owt
    (torchvision's) and the CIFAR-10 nets (cifar_relu, cifar_tanh, cifar_lrn).

    example: alexnet summary --model alexnet_onetower
    """
    from alexnet.models.summary import format_summary, summarize

    rows, totals = summarize(args.model, input_size=args.input_size, num_classes=args.num_classes)
    print_result({"model": args.model, "layers": rows, "totals": totals}, args.json,
                 format_summary(args.model, rows, totals))
    return 0


def add_summary(sub, shared: Parents) -> None:
    own = options()
    own.add_argument("--model", default="alexnet", help="registered model name")
    own.add_argument("--input-size", type=int, default=None, help="input side (default: 224; 32 for CIFAR nets)")
    own.add_argument("--num-classes", type=int, default=1000, help="size of the last layer")
    add_command(sub, "summary", parents=[own, shared.json], func=_summary)


def _prepare(args: argparse.Namespace) -> int:
    """decode, resize and store a data set once (256x256, mean image, RGB PCA).

    Reads a folder or archive of class folders, the ILSVRC-2012 tars (a tar of per-class tars, the flat validation tar
    with its devkit), or CIFAR-10's batches; scales the shorter side to --size and keeps the centre square (Section 2).
    Unreadable files are reported and skipped. A killed prepare resumes where it stopped.

    example: alexnet prepare imagenette2-224 --out ~/.cache/alexnet/stores/imagenette
    """
    from alexnet.data.prepare import format_prepare_summary, prepare_store

    summary = prepare_store(args.source, args.out, size=args.size, workers=args.workers,
                            encoding=args.encoding, max_pixels=args.max_pixels, progress=not args.json)
    print_result(summary, args.json, format_prepare_summary(summary))
    return 0


def add_prepare(sub, shared: Parents) -> None:
    own = options()
    own.add_argument("source", help="folder or archive of images, ILSVRC tar, CIFAR-10 batches, "
                     "or a name under $ALEXNET_DATA")
    own.add_argument("--out", required=True, help="folder of the prepared store")
    own.add_argument("--size", type=int, default=256, help="shorter side scaled to this, then centre-cropped")
    own.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    own.add_argument("--encoding", choices=["raw", "jpeg"], default="raw",
                     help="shard payload: raw uint8 (fast) or JPEG (about 10x smaller)")
    own.add_argument("--max-pixels", type=int, default=None,
                     help="skip images declaring more pixels than this (default: Pillow's bomb limit)")
    add_command(sub, "prepare", parents=[own, shared.json], func=_prepare)


def _config_show(args: argparse.Namespace) -> int:
    """print a preset or a run's resolved config as TOML, to copy and edit.

    SOURCE is a preset name, a TOML file or a run folder (its config.toml). --set applies overrides first, as train
    would.

    example: alexnet config show demo --set run.epochs=3 > my.toml && alexnet train --config my.toml
    """
    source = args.source
    run_config = RunPaths(Path(source)).config
    config = load_config(run_config if run_config.is_file() else source, args.set)
    print(to_toml(config), end="")
    return 0


def add_config(sub, shared: Parents) -> None:
    own = options()
    own.add_argument("action", choices=["show"], help="what to do (show)")
    own.add_argument("source", nargs="?", default="paper", metavar="PRESET|TOML|RUN_DIR",
                     help="the config to print")
    add_command(sub, "config", parents=[own, shared.set], func=_config_show)


def _info(args: argparse.Namespace) -> int:
    """what is running: versions, CPU, device, threads, allocator, LRN path.

    The same facts are saved in every run folder (environment.json) and benchmark result. The allocator is mimalloc (a
    pip wheel) unless ALEXNET_ALLOCATOR=system or LD_PRELOAD names another; the CPU LRN is the fused C++ kernel unless
    it cannot be built (the reason is shown).

    example: alexnet info --json
    """
    from alexnet.info import environment, format_environment

    env = environment(args.device)
    print_result(env, args.json, format_environment(env))
    return 0


def add_info(sub, shared: Parents) -> None:
    add_command(sub, "info", parents=[shared.device, shared.json], func=_info)
