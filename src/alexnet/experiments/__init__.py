"""The paper's claims reproduced with seeds: `alexnet experiment NAME` (runs, results JSON, plots) and
`alexnet experiment table` (experiments/README.md, generated from the results files).

An experiment module has NAME, CLAIM, BUDGETS (name -> Budget, "cpu" the default; a Budget's `runs` names
its runs folder), `run_experiment(runner, seeds, budget, overrides)` returning its results dict (with a
"table" row, or a list of rows), and `plot(results, path)`. `run` below adds what every results file
carries (command, code version, machine, wall time), writes `OUT/results/NAME.json` and `NAME.png`
(NAME-BUDGET.* for a budget other than the default), and regenerates the table.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import ModuleType

from alexnet.experiments import ablations, lrn_cifar, paper_recipe, relu_vs_tanh, time_to_accuracy
from alexnet.experiments.runner import Runner, runs_per_machine
from alexnet.experiments.table import write_table
from alexnet.fsutil import write_json

_log = logging.getLogger(__name__).info  # where progress lines go unless a caller says otherwise

EXPERIMENTS: dict[str, ModuleType] = {
    m.NAME: m for m in (relu_vs_tanh, lrn_cifar, ablations, time_to_accuracy, paper_recipe)
}
DEFAULT_BUDGET = "cpu"


def get_experiment(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run(
    name: str,
    seeds: int = 3,
    budget: str = DEFAULT_BUDGET,
    device: str = "auto",
    runs_dir: str | os.PathLike | None = None,
    out: str | os.PathLike = "experiments",
    overrides: tuple[str, ...] = (),
    command: str | None = None,
    progress: bool = False,
    log=_log,
    runner: Runner | None = None,
) -> dict:
    """Run (or continue) experiment `name` and write its results, plot and the table.

    Args:
        name: a key of EXPERIMENTS.
        seeds: seeds 0..seeds-1 of every variant.
        budget: a name in the experiment's BUDGETS.
        device: every run's run.device.
        runs_dir: where the run folders go (default runs/experiments/NAME/BUDGET); runs finished there are
            not redone, an unfinished one resumes from its checkpoint.
        out: the folder holding results/, records/ and README.md; a run with a matching record in
            OUT/records/NAME/FOLDER is not trained again (`alexnet.experiments.records`).
        overrides: config overrides for every run (section.key=value).
        command: the command line recorded in the results (default: the equivalent `alexnet experiment`).
        runner: a Runner to use (tests pass one with hooks); default one over runs_dir.

    Returns:
        the results dict, also written to OUT/results/NAME.json.
    """
    module = get_experiment(name)
    if budget not in module.BUDGETS:
        raise ValueError(f"unknown budget {budget!r} for {name}; budgets: {', '.join(module.BUDGETS)}")
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: need at least 1")
    from alexnet.info import environment

    chosen = module.BUDGETS[budget]
    folder = getattr(chosen, "runs", budget)  # budgets that share runs name the same folder
    runs_dir = Path(runs_dir) if runs_dir is not None else Path("runs") / "experiments" / name / folder
    records = Path(out) / "records" / name / folder
    runner = runner or Runner(runs_dir, progress=progress, log=log, records=records)
    t0 = time.monotonic()
    results = module.run_experiment(runner, seeds, chosen, (f"run.device={device}", *overrides))
    env = environment(device)
    results.update({
        "command": command or f"alexnet experiment {name} --seeds {seeds} --budget {budget}",
        "code_version": runner.code_version,
        "hardware": {k: env[k] for k in ("cpu", "cores", "threads", "device", "gpu", "allocator", "torch")},
        "environment": env,
        "runs_dir": str(runs_dir),
        "trained_in_this_call": list(runner.trained_now),
        "machines": runs_per_machine(runner.machines),
        "from_records": list(runner.from_records),
        "this_call_wall_s": time.monotonic() - t0,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    results_dir = Path(out) / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = name if budget == DEFAULT_BUDGET else f"{name}-{budget}"
    module.plot(results, results_dir / f"{stem}.png")
    results["plot"] = f"{stem}.png"
    write_json(results_dir / f"{stem}.json", results)
    results["table_path"] = str(write_table(out))
    return results
