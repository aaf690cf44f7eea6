"""What the commands share: the help layout, the parser of one command, the result printer, and the parent
parsers of the options several commands take.

argparse copies a parser's `parents` into it, in list order, ahead of anything added afterwards. A command whose
own options come before a shared one in its --help therefore puts them in an `options()` parser listed first,
so that every --help keeps its order.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the descriptions' line breaks and shows each option's default."""


def options(*parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A parent parser: options to list among a command's, after those of `parents`."""
    return argparse.ArgumentParser(add_help=False, parents=list(parents))


def command_texts(func: Callable[..., object]) -> tuple[str, str, str]:
    """The summary, description and example of a command, from the docstring of its handler `func`.

    The docstring is paragraphs separated by blank lines: the summary (one sentence, ending in a period), the
    description (one or more paragraphs), and last `example: COMMAND LINE`. A paragraph's lines are joined with
    spaces, so the source may wrap them anywhere. The summary is returned without its final period, as the command
    list shows it.
    """
    paragraphs = [" ".join(line.strip() for line in part.splitlines())
                  for part in re.split(r"\n\s*\n", inspect.cleandoc(func.__doc__ or ""))]
    if len(paragraphs) < 3 or not paragraphs[0].endswith(".") or not paragraphs[-1].startswith("example: "):
        raise ValueError(f"{func.__qualname__}: the docstring of a command's handler is a summary sentence, its "
                         "description and an 'example: ' line, separated by blank lines")
    summary, *description, example = paragraphs
    return summary.removesuffix("."), "\n\n".join(description), example.removeprefix("example: ")


def add_command(
    sub,
    name: str,
    func: Callable[[argparse.Namespace], int],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """The parser of `alexnet NAME`; `func(args)` runs it and returns the exit status, and its docstring is the
    command's help (see `command_texts`)."""
    summary, description, example = command_texts(func)
    parser = sub.add_parser(
        name, help=summary, description=f"{summary}.\n\n{description}", epilog=f"example:\n  {example}",
        formatter_class=Formatter, parents=list(parents),
    )
    parser.set_defaults(func=func)
    return parser


def print_result(result: object, as_json: bool, human: str) -> None:
    print(json.dumps(result, indent=2) if as_json else human)


@dataclass(frozen=True)
class Parents:
    """Parent parsers (argparse `parents=[...]`) of the options that several commands take alike."""

    json: argparse.ArgumentParser
    set: argparse.ArgumentParser
    no_progress: argparse.ArgumentParser
    device: argparse.ArgumentParser


def shared_parents() -> Parents:
    json_ = options()
    json_.add_argument("--json", action="store_true", help="print the result as JSON")
    set_ = options()
    set_.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override one config value, e.g. --set run.epochs=10 (repeatable)")
    no_progress = options()
    no_progress.add_argument("--no-progress", action="store_true", help="no progress bars")
    device = options()
    device.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when there is one)")
    return Parents(json=json_, set=set_, no_progress=no_progress, device=device)
