"""fit(): build everything from a config, run the epochs, evaluate, checkpoint, log, resume (Section 5).

A run is a folder::

    RUN/config.toml                 the resolved config
    RUN/checkpoints/latest.pt       everything needed to continue exactly (see `_checkpoint_state`)
    RUN/checkpoints/best.pt         the model with the lowest validation top-1 error so far
    RUN/metrics.jsonl               one JSON line per epoch
    RUN/curves.png                  loss and error curves, redrawn every epoch
    RUN/tensorboard/                TensorBoard events

Resuming is exact: batches and augmentation are functions of (seed, epoch, batch index), and the
checkpoint carries the weights, the optimizer's velocities, the schedule, the position in the epoch and
every process's random generator states, so a run killed at any moment and resumed from its last
checkpoint ends with the same weights as one never interrupted (on CPU, same thread count).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from alexnet.checkpoint import (
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from alexnet.config import Config, config_from_dict, config_to_dict, resolve_store, save_config
from alexnet.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_max,
    all_reduce_sum,
    cleanup,
    init_distributed,
)
from alexnet.engine import EpochStats, autocast_context, evaluate, train_one_epoch
from alexnet.fsutil import atomic_write, remove_temporaries
from alexnet.optim import build_optimizer, build_schedule


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.root / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


class StopSignal:
    """Turns SIGINT and SIGTERM into a flag the training loop checks after every step, so the run saves
    a checkpoint and returns instead of dying mid-write. The first signal of a kind puts that kind's previous
    handler back, so a second one acts as it would without this (a second Ctrl-C raises KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        previous = self._previous.get(signum)
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        self._previous = previous
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)


def build_model(config: Config, num_classes: int) -> nn.Module:
    """The configured network (`alexnet.models.create_model`) with the store's number of classes."""
    from alexnet.models import create_model

    m = config.model
    if m.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes = {m.num_classes} but the data has {num_classes} classes; "
            f"set --set model.num_classes={num_classes}"
        )
    overrides: dict = {"input_size": m.input_size, "dropout": m.dropout}
    if m.init != "paper":  # only the paper family takes an init; its default is "paper"
        overrides["init"] = m.init
    return create_model(m.name, num_classes, **overrides)


def classifier_name(model: nn.Module) -> str:
    """The name of the last fully connected layer (fc8 for the paper's net): the one fine-tuning replaces."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no fully connected layer to replace")
    return names[-1]


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load every weight of a checkpoint (.pt) or weights file (.safetensors) except the classifier's,
    which keeps its fresh initialisation (the paper's pre-train-then-fine-tune "CNN*" rows, Section 6).
    Returns the names of the parameters left initialised."""
    path = Path(path)
    state = load_weights(path)[0] if path.suffix == ".safetensors" else load_checkpoint(path)["model"]
    head = classifier_name(model)
    kept = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    expected = {f"{head}.weight", f"{head}.bias"}
    if unexpected or set(missing) - expected:
        raise ValueError(
            f"{path} does not match the model: missing {sorted(set(missing) - expected)}, unexpected "
            f"{sorted(unexpected)}; fine-tune from a checkpoint of the same architecture (model.name)"
        )
    return sorted(missing)


def _per_process_batch(config: Config, world_size: int) -> int:
    b = config.data.batch_size
    if not config.data.batch_is_global:
        return b
    if b % world_size:
        raise ValueError(
            f"data.batch_size = {b} is global (data.batch_is_global = true) but does not divide over "
            f"{world_size} processes; choose a multiple of {world_size}"
        )
    return b // world_size


def _write_metrics(path: Path, metrics: list[dict]) -> None:
    # Rewritten whole from the checkpoint's list each time, so a crash between the two never leaves
    # a duplicated or missing line.
    atomic_write(path, lambda f: f.write("".join(json.dumps(m) + "\n" for m in metrics).encode()))


def plot_curves(metrics: list[dict], path: Path) -> None:
    """Training loss, training error and validation top-1 / top-5 error against epochs, as a PNG."""
    import matplotlib

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
        ax_err.plot(epochs, [100 * m[key] for m in metrics], marker="o", label=label)
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error", ylim=(0, 100))
    ax_err.legend()
    fig.tight_layout()

    def write(f) -> None:
        fig.savefig(f, format="png", dpi=90)

    atomic_write(path, write)
    plt.close(fig)


class _Logger:
    """Rank 0's outputs of an epoch: metrics.jsonl, TensorBoard, the PNG and one printed line."""

    def __init__(self, paths: RunPaths, epochs_done: int, enabled: bool):
        self.paths = paths
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after its checkpoint
            self.writer = SummaryWriter(str(paths.tensorboard), purge_step=epochs_done + 1)

    def epoch(self, record: dict, metrics: list[dict], epochs: int) -> None:
        if not self.enabled:
            return
        _write_metrics(self.paths.metrics, metrics)
        step = math.ceil(record["epoch"])
        for key in ("train_loss", "train_error", "val_top1_error", "val_top5_error", "lr", "images_per_s"):
            self.writer.add_scalar(key, record[key], step)
        self.writer.flush()
        plot_curves(metrics, self.paths.plot)
        print(
            f"epoch {record['epoch']:g}/{epochs}  train loss {record['train_loss']:.4f} "
            f"error {100 * record['train_error']:.2f}%  |  val top-1 {100 * record['val_top1_error']:.2f}% "
            f"top-5 {100 * record['val_top5_error']:.2f}%  |  lr {record['lr']:.3g}  "
            f"{record['images_per_s']:.1f} img/s  {record['wall_time_s'] / 60:.1f} min",
            flush=True,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def fit(
    config: Config,
    run_dir: str | os.PathLike,
    resume: bool = False,
    pretrained: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Train `config` in `run_dir`; under torchrun, data-parallel over its processes.

    Args:
        config: the run's configuration.
        run_dir: the run folder (created). Holding a checkpoint already, it needs `resume=True`.
        resume: continue from `run_dir`'s latest checkpoint if there is one (start fresh otherwise, so a
            torchrun restart of a job killed before its first checkpoint works too).
        pretrained: a checkpoint or safetensors file whose weights, all but the classifier's, start
            the run (fine-tuning, `alexnet finetune`).
        progress: show tqdm bars (rank 0, on a terminal).

    Returns:
        a summary: status ("finished", "budget" or "interrupted"), signal, epoch, step, the last metrics
        record, the best validation top-1 error and the run's paths.
    """
    info = init_distributed(config.run.device)
    try:
        return _fit(config, RunPaths(Path(run_dir)), resume, pretrained, progress, info)
    finally:
        cleanup()


def _fit(config: Config, paths: RunPaths, resume: bool, pretrained, progress: bool, info: DistInfo) -> dict:
    from alexnet.data.augment import Augmenter, batch_generator
    from alexnet.data.loader import EvalBatches, TrainBatches
    from alexnet.data.store import Store

    run = config.run
    if run.threads:
        torch.set_num_threads(run.threads)
    state = None
    if paths.latest.exists():
        if not resume:
            raise FileExistsError(
                f"{paths.root} already holds a run ({paths.latest}); pass --resume to continue it "
                "or choose another --run-dir"
            )
        state = load_checkpoint(paths.latest)
        saved = config_from_dict(state["config"], str(paths.latest))
        if saved.model != config.model or saved.data.store != config.data.store:
            raise ValueError(
                f"the config differs from the one {paths.latest} was trained with in [model] or data.store; "
                f"resume with {paths.config}"
            )
        if saved.run.model_parallel != config.run.model_parallel:
            raise ValueError(
                f"{paths.latest} was trained with run.model_parallel = {saved.run.model_parallel}; resume "
                "with the same placement (its optimizer state is per tower)"
            )
        _check_resume_config(saved, config, paths)
        if len(state["rng"]) != info.world_size:
            raise ValueError(
                f"{paths.latest} was written by {len(state['rng'])} processes; resume with the same number "
                f"(got {info.world_size}) so every process gets its random state back"
            )
    if info.is_main:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        remove_temporaries(paths.root)  # left by a process killed mid-write
        save_config(config, paths.config)

    torch.manual_seed(run.seed + info.rank)  # dropout masks differ between data-parallel processes
    store = Store.open(resolve_store(config.data.store))
    device = info.device
    batch = _per_process_batch(config, info.world_size)
    loader_args = dict(rank=info.rank, world_size=info.world_size, device=device, workers=config.data.workers)
    train_batches = TrainBatches.from_store(
        store, in_memory=config.data.in_memory, batch_size=batch, seed=run.seed, **loader_args
    )
    eval_batches = EvalBatches.from_store(
        store, in_memory=config.data.in_memory, batch_size=config.data.eval_batch_size, **loader_args
    )
    augmenter = Augmenter(config.data.augment_config(), store.mean, store.eigvals, store.eigvecs, device)

    model = build_model(config, store.num_classes)
    if state is not None:
        model.load_state_dict(state["model"])  # the single-device layout, whatever the placement
    elif pretrained is not None:
        load_pretrained(model, pretrained)
    model, raw = _place(model, config, info)
    optimizer = build_optimizer(
        raw.parameters(), config.optim.kind, config.optim.lr, config.optim.momentum, config.optim.weight_decay
    )
    steps_per_epoch = len(train_batches)
    total_steps = run.epochs * steps_per_epoch  # the schedule's length; a budget only stops the run
    schedule = build_schedule(config.schedule, config.optim.lr, steps_per_epoch, total_steps)

    epoch, start_batch, step, elapsed = 0, 0, 0, 0.0
    metrics: list[dict] = []
    best = math.inf
    stats = EpochStats()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        elapsed, best = state["elapsed"], state["best"]
        metrics = [m for m in state["metrics"] if not m.get("partial")]
        stats = EpochStats(**state["epoch_stats"])
        set_rng_state(state["rng"][info.rank])
        if info.is_main:
            print(
                f"resuming from {paths.latest}: epoch {epoch + 1}, batch {start_batch}, step {step}",
                flush=True,
            )

    autocast = autocast_context(device, run.precision)
    forward = torch.compile(model) if run.compile else model
    eval_model = torch.compile(raw) if run.compile else raw
    logger = _Logger(paths, epoch, info.is_main)
    started = time.monotonic() - elapsed
    last_save = time.monotonic()
    stopper = StopSignal()
    status = "finished"

    def snapshot() -> dict:
        return _checkpoint_state(
            raw,
            optimizer,
            schedule,
            config,
            store,
            epoch=epoch,
            batch=start_batch,
            step=step,
            stats=stats,
            metrics=metrics,
            best=best,
            elapsed=time.monotonic() - started,
        )

    def save(latest: bool = True, best_too: bool = False) -> None:
        nonlocal last_save
        state = snapshot()  # every process takes part: the random states are gathered
        if info.is_main:
            if latest:
                save_checkpoint(state, paths.latest)
            if best_too:
                save_checkpoint({k: v for k, v in state.items() if k not in ("optimizer", "rng")}, paths.best)
        last_save = time.monotonic()

    def after_step(new_step: int, next_batch: int) -> bool:
        nonlocal step, start_batch, status
        step, start_batch = new_step, next_batch
        now = time.monotonic()
        flags = torch.tensor(
            [
                stopper.signum or 0,
                bool(run.budget_minutes) and now - started >= 60 * run.budget_minutes,
                bool(run.checkpoint_every_minutes) and now - last_save >= 60 * run.checkpoint_every_minutes,
            ],
            dtype=torch.int64,
        )
        signum, out_of_time, save_due = all_reduce_max(flags).tolist()
        out_of_steps = bool(run.budget_steps) and step >= run.budget_steps
        if run.checkpoint_every_steps and step % run.checkpoint_every_steps == 0:
            save_due = True
        if signum:
            status = "interrupted"
            stopper.signum = signum
        elif out_of_time or out_of_steps:
            status = "budget"
        if status != "finished" or save_due:
            save()
        return status != "finished"

    with stopper.installed():
        try:
            while epoch < run.epochs and status == "finished":
                step, stopped = train_one_epoch(
                    forward,
                    optimizer,
                    train_batches.epoch(epoch, start_batch),
                    lambda images, k, e=epoch: augmenter.train(
                        images, batch_generator(run.seed, e, k, device, info.rank)
                    ),
                    epoch=epoch,
                    step=step,
                    lr_at=schedule.lr,
                    stats=stats,
                    total=steps_per_epoch,
                    start_batch=start_batch,
                    autocast=autocast,
                    channels_last=run.channels_last,
                    label_smoothing=config.optim.label_smoothing,
                    world_size=info.world_size,
                    after_step=after_step,
                    progress=progress and info.is_main,
                )
                if status == "interrupted":
                    break
                partial = status == "budget" and start_batch < steps_per_epoch
                counts = evaluate(
                    eval_model,
                    eval_batches,
                    augmenter.center,
                    store.num_classes,
                    autocast=autocast,
                    channels_last=run.channels_last,
                    progress=progress and info.is_main,
                    total=len(eval_batches),
                )
                record = _epoch_record(
                    epoch,
                    start_batch,
                    steps_per_epoch,
                    stats,
                    counts,
                    schedule.lr(step - 1),
                    time.monotonic() - started,
                    info.world_size,
                )
                if partial:
                    record["partial"] = True
                else:
                    schedule.epoch_end(epoch, counts.top1_error)
                    epoch, start_batch, stats = epoch + 1, 0, EpochStats()
                metrics.append(record)
                is_best = counts.top1_error < best
                best = min(best, counts.top1_error)
                every = run.checkpoint_every_epochs
                save(
                    latest=status != "finished" or epoch == run.epochs or bool(every and epoch % every == 0),
                    best_too=is_best,
                )
                logger.epoch(record, metrics, run.epochs)
        finally:
            logger.close()
    return {
        "status": status,
        "signal": stopper.signum,
        "epoch": epoch,
        "step": step,
        "last": metrics[-1] if metrics else None,
        "best_top1_error": best,
        "run_dir": str(paths.root),
        "latest": str(paths.latest),
        "best": str(paths.best),
        "metrics": str(paths.metrics),
        "plot": str(paths.plot),
    }


# What fixes the batches of a run (their order, or the content of each): changing one of these on resume
# would continue a different run than the checkpoint's. run.epochs and the budgets may change.
RESUME_FIXED = (
    "run.seed",
    "data.batch_size",
    "data.batch_is_global",
    "data.crop",
    "data.random_crop",
    "data.flip",
    "data.lighting_std",
    "data.normalize",
    "data.input_scale",
)


def _check_resume_config(saved: Config, config: Config, paths: RunPaths) -> None:
    def get(c: Config, dotted: str):
        section, key = dotted.split(".")
        return getattr(getattr(c, section), key)

    changed = [
        f"{key} = {get(config, key)!r} (was {get(saved, key)!r})"
        for key in RESUME_FIXED
        if get(config, key) != get(saved, key)
    ]
    if changed:
        raise ValueError(
            f"the config changes what {paths.latest} was trained on: {', '.join(changed)}; "
            f"resume with {paths.config}"
        )


def _place(model: nn.Module, config: Config, info: DistInfo) -> tuple[nn.Module, nn.Module]:
    """Put the model on its device(s): (the module to train, the module whose state is checkpointed)."""
    if config.run.model_parallel == 2:
        from alexnet.model_parallel import TowerParallel, tower_devices

        raw: nn.Module = TowerParallel(model, tower_devices(info.device))
    else:
        raw = model.to(info.device)
    if config.run.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if info.world_size == 1:
        return raw, raw
    from torch.nn.parallel import DistributedDataParallel

    one_device = info.device.type == "cuda" and config.run.model_parallel == 1
    return DistributedDataParallel(raw, device_ids=[info.device] if one_device else None), raw


def _epoch_record(
    epoch: int,
    batches_done: int,
    steps_per_epoch: int,
    stats: EpochStats,
    counts,
    lr: float,
    wall: float,
    world_size: int,
) -> dict:
    sums = all_reduce_sum(torch.tensor([stats.loss_sum, stats.errors, stats.images], dtype=torch.float64))
    loss_sum, errors, images = sums.tolist()
    seconds = float(all_reduce_max(torch.tensor([stats.seconds], dtype=torch.float64)).item())
    return {
        "epoch": round(epoch + batches_done / steps_per_epoch, 4),
        "train_loss": loss_sum / max(images, 1),
        "train_error": errors / max(images, 1),
        "val_top1_error": counts.top1_error,
        "val_top5_error": counts.top5_error,
        "val_images": counts.images,
        "lr": lr,
        "images_per_s": images / seconds if seconds else 0.0,
        "wall_time_s": wall,
        "world_size": world_size,
    }


def _checkpoint_state(
    raw: nn.Module,
    optimizer,
    schedule,
    config: Config,
    store,
    *,
    epoch: int,
    batch: int,
    step: int,
    stats: EpochStats,
    metrics: list[dict],
    best: float,
    elapsed: float,
) -> dict:
    """Everything a resumed run needs (plus what evaluate/predict/export need: config and class names)."""
    model_state = raw.single_state_dict() if hasattr(raw, "single_state_dict") else raw.state_dict()
    return {
        "format": "alexnet-checkpoint-1",
        "model": model_state,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "epoch": epoch,  # the epoch in progress (0-based)
        "batch": batch,  # the next batch of that epoch
        "step": step,  # optimizer steps done
        "epoch_stats": stats.state_dict(),
        "rng": all_gather_objects(rng_state()),  # one per process, in rank order
        "config": config_to_dict(config),
        "classes": list(store.classes),
        "class_names": list(store.class_names),
        "mean": torch.from_numpy(store.mean),  # the input normalisation, so test time needs no store
        "metrics": list(metrics),
        "best": best,
        "elapsed": elapsed,
    }


def finetune(
    config: Config,
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune: start from `checkpoint`'s weights (trained on one label set), with a fresh classifier
    sized for `config`'s store, and train every layer on it (the paper's "CNN*" rows, Section 6).
    `model.num_classes` is taken from the store."""
    from alexnet.data.store import Store

    store = Store.open(resolve_store(config.data.store))
    config = replace(config, model=replace(config.model, num_classes=store.num_classes))
    return fit(config, run_dir, resume=resume, pretrained=checkpoint, progress=progress)
