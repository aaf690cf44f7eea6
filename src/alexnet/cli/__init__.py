"""`alexnet <command>`: parses arguments and calls library functions; nothing else lives here.

Importing this package does not import torch: each command imports what it runs, so `alexnet --help`,
`--version` and `config show` answer at once.

Each command is one `add_NAME(sub, shared)` function in the module of its group (data, training, evaluation,
analysis, experiments): it adds the command's parser, taking the shared options from `common`'s parent parsers,
and sets `func`, the handler that runs it, whose docstring is the command's help: its summary, description and
example (`common.command_texts`). COMMANDS lists them in the order `alexnet --help` shows.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from alexnet import __version__
from alexnet.allocator import reexec_with_allocator
from alexnet.cli import analysis, data, evaluation, experiments, training
from alexnet.cli.common import shared_parents
from alexnet.errors import USER_ERRORS

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

# The order of a newcomer's path through the commands, which is not the modules' grouping.
COMMANDS = (
    data.add_summary, data.add_prepare,
    training.add_train, training.add_finetune,
    evaluation.add_evaluate, evaluation.add_predict, evaluation.add_export,
    training.add_demo, data.add_config,
    analysis.add_kernels, analysis.add_features, analysis.add_retrieve, analysis.add_codes, analysis.add_report,
    evaluation.add_import_caffe,
    experiments.add_benchmark, experiments.add_experiment,
    data.add_info,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = shared_parents()
    for add in COMMANDS:
        add(sub, shared)
    return parser


def console() -> None:
    """The `alexnet` executable: first the allocator (a re-exec, before torch loads), then the command."""
    reexec_with_allocator(sys.argv[1:])
    raise SystemExit(main())


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record (a test's capture replaces it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_library_log() -> None:
    """The library logs (epoch lines, plans, resumption) and prints nothing; the command line shows its log
    on stderr, so that stdout holds only a command's result (one JSON document with --json)."""
    logger = logging.getLogger("alexnet")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # experiment records the command line that produced its results
    show_library_log()
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
