"""Commands that measure: benchmark (ours against torchvision's on this machine) and experiment (the paper's
claims over seeds, and the table of results)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path

from alexnet.cli.common import Parents, add_command, options, print_result
from alexnet.errors import require


def _benchmark(args: argparse.Namespace) -> int:
    """ours vs torchvision's, measured in one run on this machine.

    Training steps (fp32, bf16) of the paper net, the paper net without LRN and torchvision's AlexNet in turn; centre
    and ten-crop inference; GFLOP/s against a matmul peak; our input pipeline vs torchvision's reference; the real
    training loop (a split in memory, and streamed from disk) vs the same network on one batch, with peak anonymous
    memory. About 20 minutes on a 2-core AMD EPYC (Zen 4), longer on a slower machine.

    example: alexnet benchmark --json > bench.json
    """
    from alexnet.benchmark import run_benchmark
    from alexnet.demo import demo_store

    store = args.store or demo_store()
    result = run_benchmark(store, rounds=args.rounds, e2e_epochs=args.epochs,
                           log=(lambda line: print(line, file=sys.stderr)) if args.json else print)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def add_benchmark(sub, shared: Parents) -> None:
    p = add_command(sub, "benchmark", func=_benchmark)
    p.add_argument("--store", default=None, help="prepared Imagenette store (default: the demo's, prepared once)")
    p.add_argument("--rounds", type=int, default=10,
                   help="alternating timed rounds, one step of each configuration a round (medians are kept; a "
                        "virtual machine's steps move by +-10 %% from round to round)")
    p.add_argument("--epochs", type=int, default=2,
                   help="whole epochs of the real training loop, in memory and streamed (the last one is compared)")
    # Not the shared --json: its help says where the progress goes, so that stdout can be redirected.
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress on stderr)")


def _experiment(args: argparse.Namespace) -> int:
    """reproduce one of the paper's claims over seeds, or write the table of results.

    Runs every variant x seed of experiment NAME (relu-vs-tanh: Figure 1; lrn-cifar: Section 3.3's 13 % / 11 % CIFAR-10
    net with and without LRN; ablations: the paper's ablations on Imagenette; time-to-accuracy: minutes to 60 and 70 %
    top-1; paper-recipe: Section 5's recipe against the demo's), one run folder each, unattended and resumable: run the
    same command again after a kill and finished runs are kept, the unfinished one continues from its checkpoint. Writes
    OUT/results/NAME.json (config, code version, machine, per-seed numbers, mean and standard deviation, wall time) and
    NAME.png, then regenerates OUT/README.md, the table of every results file. NAME table only regenerates the table.

    example: alexnet experiment relu-vs-tanh --seeds 3 --budget cpu && alexnet experiment table
    """
    from alexnet.experiments import run
    from alexnet.experiments.runner import ExperimentInterrupted
    from alexnet.experiments.table import write_table

    if args.name == "table":
        path = write_table(args.out)
        print_result({"path": str(path)}, args.json, str(path))
        return 0
    require("matplotlib", "plots", "alexnet experiment (its plots)")
    overrides = [*args.set, *([f"data.store={args.data}"] if args.data else [])]
    stream = sys.stderr if args.json else sys.stdout

    def log(line: str) -> None:
        print(line, file=stream, flush=True)

    try:
        # With --json, stdout holds only the results: the runs' own epoch lines go to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            results = run(args.name, seeds=args.seeds, budget=args.budget, device=args.device,
                          runs_dir=args.runs_dir, out=args.out, overrides=tuple(overrides),
                          command=shlex.join(["alexnet", *args.argv]), progress=not args.no_progress, log=log)
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
    print_result(results, args.json, human)
    return 0


def add_experiment(sub, shared: Parents) -> None:
    head = options()
    head.add_argument("name", metavar="NAME",
                      help="relu-vs-tanh, lrn-cifar, ablations, time-to-accuracy, paper-recipe, or table")
    head.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every variant")
    head.add_argument("--budget", default="cpu",
                      help="cpu (sized for a 2-core CPU, reduced); also, by experiment: cpu-short, gpu, paper (full "
                           "length), smoke (tests); an unknown name lists the experiment's budgets")
    data = options()
    data.add_argument("--data", default=None, metavar="STORE",
                      help="train on this prepared store (default: CIFAR-10, or Imagenette for ablations, "
                           "time-to-accuracy and paper-recipe, from $ALEXNET_DATA, prepared once)")
    folders = options()
    folders.add_argument("--runs-dir", default=None, help="run folders (default: runs/experiments/NAME/BUDGET)")
    folders.add_argument("--out", default="experiments", help="folder of results/ and README.md")
    p = add_command(sub, "experiment", parents=[head, shared.device, data, shared.set, folders, shared.no_progress],
                    func=_experiment)
    # Not the shared --json: its help says where the progress goes, so that stdout can be redirected.
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress lines on stderr)")
