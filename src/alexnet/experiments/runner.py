"""Run an experiment's training runs, one folder per run, so that a killed experiment continues where it
stopped and never redoes a finished run.

A run is a `RunSpec`: a complete config (its `run.epochs` is the cap), a seed, and a rule that decides
after each epoch whether the run has seen enough. `Runner.run` trains it with `alexnet.train.fit`, one
epoch per call when it has a rule (`fit(..., until_epoch=k)` resumes exactly from the checkpoint it wrote
at the end of the previous epoch, with the whole run's schedule), asks the rule, and when the run is over
writes `RUN/experiment-run.json`, the marker that makes a later call return the stored outcome without
training. A run killed mid-epoch resumes from its last checkpoint. A finished run that a spec asks more of
(a higher cap, a rule that wants more epochs: a longer budget over the same runs folder) continues from its
last checkpoint; with a schedule that does not depend on `run.epochs` (a constant rate, steps at fixed
epochs) that is exactly the run a longer cap would have trained from the start, and a spec that asks less
of a longer run gets its first epochs.

    RUNS/<key>/                        an ordinary run folder (`alexnet.rundir`)
    RUNS/<key>/experiment-run.json     the finished run's outcome (written last, atomically)
    RUNS/<key>/experiment-wall.json    seconds spent in fit so far, across calls

With a records folder (`alexnet experiment` uses experiments/records/NAME/FOLDER), every finished run also
leaves a small record there (`alexnet.experiments.records`), and a run whose record matches its spec is done
on any machine: the runner returns the stored outcome without its run folder. What an experiment derives
from a finished run's checkpoint (per-image hits, live units) it asks of `Runner.extra`, which keeps the
result in the record, so that a run from a record needs no checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scipy import stats

from alexnet.config import Config
from alexnet.experiments.records import read_record, record_path, write_record
from alexnet.fsutil import write_json
from alexnet.rundir import RunPaths, write_metrics
from alexnet.rundir import read_metrics as read_records

_log = logging.getLogger(__name__).info  # where progress lines go unless a caller says otherwise

Metrics = list[dict]
OUTCOME_FILE = "experiment-run.json"
WALL_FILE = "experiment-wall.json"


class ExperimentInterrupted(RuntimeError):
    """A signal stopped a run (its checkpoint is saved); running the experiment again continues it."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment.

    key: the run folder's name, unique within the experiment (variant, setting and seed in it).
    variant: the label results group by ("relu", "tanh").
    config: complete; `run.epochs` is the most epochs the run may train, `run.seed` its seed.
    done: called with the whole epochs' metrics after each epoch; True ends the run (None: run to the cap).
    facts: JSON-ready facts results carry along (a learning rate, a role in a sweep).
    """

    key: str
    variant: str
    config: Config
    done: Callable[[Metrics], bool] | None = None
    facts: dict = field(default_factory=dict)


@dataclass
class RunOutcome:
    key: str
    variant: str
    seed: int
    status: str  # "finished" (the rule or the cap ended it) or "diverged" (a non-finite loss)
    metrics: Metrics
    wall_s: float  # seconds spent in fit, over every call that trained this run
    run_dir: str
    facts: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # what the experiment derived from the finished run (JSON)

    @property
    def epochs(self) -> int:
        return len(self.metrics)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.run_dir))


def read_metrics(run_dir: Path) -> Metrics:
    """The whole epochs' records of a run folder's metrics.jsonl (none when it has none yet)."""
    return read_records(RunPaths(Path(run_dir)).metrics, whole_epochs=True)[0]


class Runner:
    """Trains RunSpecs under `root`, each at most once.

    Args:
        root: the experiment's runs folder (one subfolder per run key).
        progress: tqdm bars inside fit.
        log: where one line per epoch-chunk and per run goes.
        on_finished: called with each outcome the moment its marker is written (tests kill here).
        records: the folder of this experiment's run records (None: run folders only).
    """

    def __init__(self, root: str | os.PathLike, progress: bool = False, log: Callable[[str], None] = _log,
                 on_finished: Callable[[RunOutcome], None] | None = None,
                 records: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.progress = progress
        self.log = log
        self.on_finished = on_finished
        self.records = Path(records) if records is not None else None
        # the code this process runs, as it was when the process started: a checkout changed while a run is
        # under way (a commit, an edit) changes the files, not the modules already loaded
        self.code_version = code_version()
        self.trained_now: list[str] = []  # keys this Runner trained (rather than found finished)
        self.from_records: list[str] = []  # keys whose outcome came from a record
        self.machines: dict[str, str] = {}  # run key -> the machine that trained it (its CPU model, or its GPU)

    def finished(self, key: str) -> RunOutcome | None:
        """The stored outcome of run `key`, or None while it is not finished."""
        path = self.root / key / OUTCOME_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if "info" in data:  # the name of `facts` in markers written before 2026-12-05
            data["facts"] = data.pop("info")
        return RunOutcome(**{**data, "metrics": read_metrics(self.root / key)})

    def run(self, spec: RunSpec) -> RunOutcome:
        """Train `spec` to its end (or return its stored outcome). Two processes on one runs folder never
        train the same run: the second waits for the first's lock, then finds the run finished."""
        with _run_lock(self.root, spec.key, self.log):
            return self._run(spec)

    def _run(self, spec: RunSpec) -> RunOutcome:
        record = read_record(self.records, spec.key, spec.config)
        if record is not None:
            outcome = self._from_record(spec, record)
            if outcome.status == "diverged" or _complete(spec, outcome.metrics):
                self.from_records.append(spec.key)
                # records before 2026-12-06 name only the CPU; every one of them ran on a CPU
                self.machines[spec.key] = record.get("machine") or record.get("cpu") or "unknown"
                return _prefix(spec, outcome)
            # the spec asks more epochs than the record holds: continue the run folder (or train it anew)
        stored = self.finished(spec.key)
        if stored is not None and (stored.status == "diverged" or _complete(spec, stored.metrics)):
            # trained earlier, perhaps elsewhere (a shared runs folder): the machine its run folder names
            self.machines[spec.key] = trained_on(self.root / spec.key) or machine(spec.config.run.device)
            outcome = stored if stored.status == "diverged" else _prefix(spec, stored)
            if record is None or len(record["metrics"]) < outcome.epochs:
                self._write_record(spec, outcome)  # a run finished before records were kept
            return outcome
        import torch

        from alexnet.errors import NonFiniteLossError
        from alexnet.train import fit

        self.machines[spec.key] = machine(spec.config.run.device)

        # Tiny initial weights (cuda-convnet's 1e-4) make denormal floats, whose arithmetic is slow on a CPU;
        # flushing them to zero changes nothing a network can notice (GPUs of the time flushed them too).
        torch.set_flush_denormal(True)

        run_dir = self.root / spec.key
        wall_path = run_dir / WALL_FILE
        wall = json.loads(wall_path.read_text())["wall_s"] if wall_path.is_file() else 0.0
        metrics = _synced_metrics(run_dir)
        status = "finished"
        self.trained_now.append(spec.key)
        while not _complete(spec, metrics):
            # One epoch a call when a rule looks at each epoch, else the whole run; the schedule is always
            # that of the whole run (`run.epochs`), so a linear decay does not change between calls.
            until = len(metrics) + 1 if spec.done is not None else None
            t0 = time.monotonic()
            try:
                summary = fit(spec.config, run_dir, resume=True, progress=self.progress, until_epoch=until)
            except NonFiniteLossError as err:
                status = "diverged"
                self.log(f"{spec.key}: diverged ({err})")
                break
            finally:
                wall += time.monotonic() - t0
                if run_dir.is_dir():  # fit leaves no folder when the run could not start
                    write_json(wall_path, {"wall_s": wall})
            if summary["status"] == "interrupted":
                raise ExperimentInterrupted(
                    f"{spec.key} interrupted by signal {summary['signal']}; its checkpoint is saved, run the "
                    "experiment again to continue"
                )
            done_before, metrics = len(metrics), _synced_metrics(run_dir)
            if len(metrics) <= done_before:
                raise RuntimeError(f"{run_dir}: fit returned without a new epoch (epoch {done_before})")
        outcome = RunOutcome(spec.key, spec.variant, spec.config.run.seed, status, metrics, wall, str(run_dir),
                             spec.facts)
        write_json(run_dir / OUTCOME_FILE, {k: v for k, v in asdict(outcome).items() if k != "metrics"})
        self._write_record(spec, outcome)
        self.log(f"{spec.key}: {status} after {outcome.epochs} epochs, {wall / 60:.1f} min")
        if self.on_finished is not None:
            self.on_finished(outcome)
        return outcome


    def extra(self, outcome: RunOutcome, name: str, compute: Callable[[RunOutcome], object]) -> object:
        """`outcome.extras[name]`, computed from the finished run folder by `compute(outcome)` the first time
        (JSON-ready) and kept in its marker and its record."""
        if name in outcome.extras:
            return outcome.extras[name]
        if not Path(outcome.run_dir).is_dir():
            where = record_path(self.records, outcome.key) if self.records else outcome.run_dir
            raise FileNotFoundError(
                f"{outcome.key}: its record has no {name!r} and its run folder {outcome.run_dir} is gone, so "
                f"there is nothing to compute it from; delete {where} to train the run again")
        outcome.extras[name] = value = compute(outcome)
        # kept where the stored run is this outcome (not a longer run that this one is the first epochs of)
        marker = Path(outcome.run_dir) / OUTCOME_FILE
        if marker.is_file() and len(read_metrics(Path(outcome.run_dir))) == outcome.epochs:
            data = json.loads(marker.read_text())
            write_json(marker, {**data, "extras": {**data.get("extras", {}), name: value}})
        path = record_path(self.records, outcome.key) if self.records is not None else None
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            if len(data["metrics"]) == outcome.epochs:
                write_json(path, {**data, "extras": {**data.get("extras", {}), name: value}}, indent=1)
        return value

    def _from_record(self, spec: RunSpec, record: dict) -> RunOutcome:
        return RunOutcome(spec.key, record["variant"], record["seed"], record["status"], record["metrics"],
                          record["wall_s"], str(self.root / spec.key), record.get("facts", {}),
                          record.get("extras", {}))

    def _write_record(self, spec: RunSpec, outcome: RunOutcome) -> None:
        if self.records is None:
            return
        from alexnet.info import cpu_model

        fields = {k: v for k, v in asdict(outcome).items() if k not in ("key", "run_dir")}
        fields.update(code_version=self.code_version, cpu=cpu_model(), machine=self.machines[spec.key],
                      threads=_threads())
        write_record(self.records, spec.key, fields, spec.config)


def runs_per_machine(machines: dict[str, str]) -> dict[str, int]:
    """{machine: how many of the runs it trained}, the most runs first (ties by name)."""
    return dict(sorted(Counter(machines.values()).items(), key=lambda item: (-item[1], item[0])))


def machine(device: str) -> str:
    """What a run on `device` ran on, for the experiments' tables: the GPU's name on CUDA, else the CPU model."""
    from alexnet.distributed import resolve_device
    from alexnet.info import cpu_model, gpu_name

    return gpu_name(resolve_device(device)) or cpu_model()


def trained_on(run_dir: Path) -> str | None:
    """The machine a run folder's environment.json names (its GPU, else its CPU), or None without one."""
    path = RunPaths(run_dir).environment
    try:
        env = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return env.get("gpu") or env.get("cpu") or None


def _threads() -> int:
    import torch

    return torch.get_num_threads()


@contextlib.contextmanager
def _run_lock(root: Path, key: str, log: Callable[[str], None]):
    """An exclusive lock on ROOT/.KEY.lock for the duration (the kernel drops it when a process dies);
    where fcntl does not exist (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{key}: another process is training it; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _synced_metrics(run_dir: Path) -> Metrics:
    """The run's whole epochs, from its checkpoint when metrics.jsonl lags it (a kill between the checkpoint's
    save and the metrics file's write leaves the file one epoch behind; resuming then trains nothing new)."""
    from alexnet.checkpoint import TrainingState

    metrics, paths = read_metrics(run_dir), RunPaths(Path(run_dir))
    if paths.latest.is_file():
        saved = [m for m in TrainingState.load(paths.latest).metrics if not m.get("partial")]
        if len(saved) > len(metrics):
            write_metrics(paths.metrics, saved)
            return saved
    return metrics


def _complete(spec: RunSpec, metrics: Metrics) -> bool:
    """Whether a run with these metrics has what `spec` asks for: its cap, or its rule says enough."""
    return len(metrics) >= spec.config.run.epochs or bool(metrics and spec.done is not None and spec.done(metrics))


def _prefix(spec: RunSpec, outcome: RunOutcome) -> RunOutcome:
    """The outcome `spec` would have had: the first epochs of a run that a longer spec trained further (the
    same run, so the same numbers). Its wall time is the stored one pro rata of fit's own elapsed time."""
    metrics = outcome.metrics
    k = next(k for k in range(1, len(metrics) + 1) if _complete(spec, metrics[:k]))
    if k == len(metrics):
        return outcome
    share = metrics[k - 1]["wall_time_s"] / metrics[-1]["wall_time_s"] if metrics[-1]["wall_time_s"] else 1.0
    # what was derived from the longer run's end is not this outcome's
    return dataclasses.replace(outcome, metrics=metrics[:k], wall_s=outcome.wall_s * share, extras={})


def code_version() -> dict:
    """The package version and, from a git checkout, the commit and whether the tree had changes."""
    from alexnet import __version__

    here = Path(__file__).resolve().parent
    version = {"alexnet": __version__, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            version["commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", str(here.parent)],
                                    capture_output=True, text=True, timeout=10)
            version["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def summary_stats(values: list[float]) -> dict:
    """What a results file keeps of per-seed numbers: the values, n, mean and (n > 1) standard deviation."""
    return {
        "values": values,
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def t975(df: float) -> float:
    """Student's t 97.5 % quantile for `df` degrees of freedom (a 95 % two-sided interval)."""
    return float(stats.t.ppf(0.975, max(1.0, df)))
