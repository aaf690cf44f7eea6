"""A run is a folder; this module knows its layout and writes its logs.

    RUN/config.toml                 the resolved config
    RUN/environment.json            versions, CPU, device, threads, allocator, LRN path (`alexnet info`)
    RUN/checkpoints/latest.pt       everything needed to continue exactly (`alexnet.checkpoint.TrainingState`)
    RUN/checkpoints/best.pt         the model with the lowest validation top-1 error so far
    RUN/metrics.jsonl               one JSON line per epoch
    RUN/curves.png                  loss and error curves, redrawn every epoch
    RUN/tensorboard/                TensorBoard events
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from alexnet.fsutil import atomic_write

log = logging.getLogger(__name__)


def _inside(relative: str) -> property:
    """A path of the run folder, relative to its root."""
    return property(lambda paths: paths.root / relative, doc=f"RUN/{relative}")


@dataclass(frozen=True)
class RunPaths:
    """The paths of run folder `root`, as the module docstring lays them out."""

    root: Path
    config = _inside("config.toml")
    environment = _inside("environment.json")
    checkpoints = _inside("checkpoints")
    latest = _inside("checkpoints/latest.pt")
    best = _inside("checkpoints/best.pt")
    metrics = _inside("metrics.jsonl")
    plot = _inside("curves.png")
    tensorboard = _inside("tensorboard")


def read_metrics(path: Path, whole_epochs: bool = False) -> tuple[list[dict], int]:
    """The records of a metrics.jsonl (none when there is no file) and how many lines were not JSON objects.
    `whole_epochs` leaves out the record of an epoch a budget cut short ("partial")."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return [], 0
    records, bad = [], 0
    for line in filter(str.strip, text.splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if whole_epochs:
        records = [r for r in records if not r.get("partial")]
    return records, bad


def write_metrics(path: Path, metrics: list[dict]) -> None:
    # Rewritten whole from the checkpoint's list each time, so a crash between the two never leaves
    # a duplicated or missing line.
    atomic_write(path, lambda f: f.write("".join(json.dumps(m) + "\n" for m in metrics).encode()))


def plot_curves(metrics: list[dict], path: Path) -> None:
    """Training loss, training error and validation top-1 / top-5 error against epochs, as a PNG."""
    import matplotlib  # heavy (about a second with its font cache): imported only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in (
        ("train_error", "train top-1"),
        ("val_top1_error", "val top-1"),
        ("val_top5_error", "val top-5"),
    ):
        points = [(m["epoch"], 100 * m[key]) for m in metrics if m[key] is not None]  # None: not validated
        ax_err.plot([e for e, _ in points], [v for _, v in points], marker="o", label=label)
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error", ylim=(0, 100))
    ax_err.legend()
    fig.tight_layout()

    def write(f) -> None:
        fig.savefig(f, format="png", dpi=90)

    atomic_write(path, write)
    plt.close(fig)


def optional(module: str, extra: str, skipped: str) -> bool:
    """Whether optional `module` is installed; if not, log once what is skipped and which extra brings it."""
    import importlib

    try:
        importlib.import_module(module)
        return True
    except ImportError:
        pass
    if (module, skipped) not in _SKIPPED:
        _SKIPPED.add((module, skipped))
        log.warning(f"{module} is not installed: {skipped} (pip install 'alexnet[{extra}]')")
    return False


_SKIPPED: set[tuple[str, str]] = set()


class RunLogger:
    """Rank 0's outputs of an epoch: metrics.jsonl, TensorBoard, the PNG and one logged line. Without the
    optional packages (the `plots` and `tensorboard` extras) the PNG and the events are skipped, said once."""

    def __init__(self, paths: RunPaths, epochs_done: int, enabled: bool):
        self.paths = paths
        self.enabled = enabled
        self.writer = None
        self.plots = enabled and optional("matplotlib", "plots", "no curves.png in run folders")
        if enabled and optional("tensorboard", "tensorboard", "no TensorBoard event files in run folders"):
            from torch.utils.tensorboard import SummaryWriter  # heavy; only rank 0 writes events

            # purge_step drops events a killed run wrote after its checkpoint
            self.writer = SummaryWriter(str(paths.tensorboard), purge_step=epochs_done + 1)

    def epoch(self, record: dict, metrics: list[dict], epochs: float) -> None:
        if not self.enabled:
            return
        write_metrics(self.paths.metrics, metrics)
        step = math.ceil(record["epoch"])
        if self.writer is not None:
            for key in ("train_loss", "train_error", "val_top1_error", "val_top5_error", "lr", "images_per_s"):
                if record[key] is not None:
                    self.writer.add_scalar(key, record[key], step)
            self.writer.flush()
        if self.plots:
            plot_curves(metrics, self.paths.plot)
        val = (f"val top-1 {100 * record['val_top1_error']:.2f}% top-5 {100 * record['val_top5_error']:.2f}%"
               if record["val_top1_error"] is not None else "not validated")
        log.info(
            f"epoch {record['epoch']:g}/{epochs:g}  train loss {record['train_loss']:.4f} "
            f"error {100 * record['train_error']:.2f}%  |  {val}  |  lr {record['lr']:.3g}  "
            f"{record['images_per_s']:.1f} img/s  {record['wall_time_s'] / 60:.1f} min"
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


