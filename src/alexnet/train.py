"""fit(): build everything from a config, run the epochs, evaluate, checkpoint, log, resume (Section 5).

The run folder's layout is in `alexnet.rundir`; what a checkpoint holds is `alexnet.checkpoint.TrainingState`.

Resuming is exact: batches and augmentation are functions of (seed, epoch, batch index), and the
checkpoint carries the weights, the optimizer's velocities, the schedule, the position in the epoch and
every process's random generator states, so a run killed at any moment and resumed from its last
checkpoint ends with the same weights as one never interrupted (on CPU, same thread count).

Everything is checked (config, store, device, model, checkpoint) before anything is written, so a run
that cannot start leaves no folder behind.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from alexnet.budget import StopRules, describe_plan, make_plan
from alexnet.checkpoint import TrainingState
from alexnet.config import Config, RunConfig, save_config
from alexnet.data.augment import Augmenter
from alexnet.data.loader import EvalBatches, TrainBatches
from alexnet.data.store import Store
from alexnet.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_max,
    all_reduce_sum,
    init_distributed,
    shutdown_distributed,
)
from alexnet.engine import (
    Counts,
    EpochData,
    EpochStats,
    TrainStep,
    autocast_context,
    evaluate,
    predict,
    synchronize,
    train_one_epoch,
)
from alexnet.fsutil import remove_temporaries, write_json
from alexnet.info import channels_last_by_default, environment
from alexnet.model_parallel import place_model, single_state_dict
from alexnet.models.build import build_model, finetune_config, load_pretrained
from alexnet.optim import LinearSchedule, Schedule, build_optimizer, build_schedule, parameter_groups
from alexnet.paths import resolve_store
from alexnet.resume import adopt_unset_keys, resume_conflicts
from alexnet.rundir import RunLogger, RunPaths
from alexnet.seeding import batch_generator, rng_state, set_rng_state
from alexnet.signals import StopSignal

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What a run trains with, built once from the config before anything is written."""

    config: Config  # resolved: model.num_classes set from the store
    process: DistInfo
    store: Store
    train_batches: TrainBatches
    eval_batches: EvalBatches
    augmenter: Augmenter
    model: nn.Module  # the module to train (DistributedDataParallel under torchrun)
    unwrapped: nn.Module  # the network itself (not DistributedDataParallel), whose weights are checkpointed
    optimizer: torch.optim.Optimizer
    schedule: Schedule

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)


@dataclass
class Position:
    """Where the run is; all of it goes into the checkpoint."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps done
    best: float = math.inf  # lowest validation top-1 error so far
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stats: EpochStats = field(default_factory=EpochStats)
    plan: dict[str, Any] | None = None  # a budgeted run's plan, once made (see _plan_budget)


def fit(
    config: Config,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    pretrained: str | os.PathLike[str] | None = None,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
    until_epoch: int | None = None,
) -> dict[str, Any]:
    """Train `config` in `run_dir`; under torchrun, data-parallel over its processes.

    Args:
        config: the run's configuration; `model.num_classes` unset is taken from the store.
        run_dir: the run folder (created). Holding a checkpoint already, it needs `resume=True`.
        resume: continue from `run_dir`'s latest checkpoint if there is one (start fresh otherwise, so a
            torchrun restart of a job killed before its first checkpoint works too).
        pretrained: a checkpoint or safetensors file whose weights, all but the classifier's, start
            the run (fine-tuning, `alexnet finetune`).
        progress: show tqdm bars (rank 0, on a terminal).
        clock: what the budget and the checkpoint intervals are measured with (a fake one in tests).
        until_epoch: return once this many epochs are done (a checkpoint saved, status "paused"), the
            schedule still that of `run.epochs`; a later call with `resume` continues the same run
            (an experiment that looks at every epoch before it trains the next).

    Returns:
        a summary: status ("finished", "budget", "paused" or "interrupted"), signal, epoch, step, the last
        metrics record, the best validation top-1 error and the run's paths.
    """
    process = init_distributed(config.run.device)
    try:
        return _fit(config, RunPaths(Path(run_dir)), resume, pretrained, progress, process, clock, until_epoch)
    finally:
        shutdown_distributed(process)


def _fit(config: Config, paths: RunPaths, resume: bool, pretrained: str | os.PathLike[str] | None, progress: bool,
         process: DistInfo, clock: Callable[[], float], until_epoch: int | None = None) -> dict[str, Any]:
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    store = Store.open(resolve_store(config.data.store))
    config = config.with_num_classes(store.num_classes, f"store {store.root}")
    if config.run.channels_last is None:
        layout = channels_last_by_default(process.device, config.run.precision)
        config = replace(config, run=replace(config.run, channels_last=layout))
    state, config = _resume_state(paths, config, resume, process)
    channels_last = config.run.channels_last
    assert channels_last is not None, "resolved above; a resumed run does not take it from its checkpoint"
    run = _build(config, process, store, state, pretrained)
    pos = _position(state, process, paths)
    now = clock()
    control = StopRules(config.run, StopSignal(), clock, now - (state.elapsed if state else 0.0), now,
                      device_sync=partial(synchronize, process.device))
    if process.is_main:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        remove_temporaries(paths.root)  # left by a process killed mid-write
        save_config(config, paths.config)
        write_json(paths.environment, environment(config.run.device))
    # torch.compile of a Module returns an OptimizedModule, a Module (its annotation says only Callable)
    forward = cast(nn.Module, torch.compile(run.model)) if config.run.compile else run.model
    eval_model = cast(nn.Module, torch.compile(run.unwrapped)) if config.run.compile else run.unwrapped
    autocast = autocast_context(process.device, config.run.precision)
    train_step = TrainStep(forward, run.optimizer, run.schedule.lr, autocast, channels_last,
                           config.optim.label_smoothing)
    gathered_by_crop = run.train_batches.in_memory and process.device.type == "cpu"
    with control.stopper.installed(), RunLogger(paths, pos.epoch, process.is_main) as logger:
        last = min(config.run.epochs, until_epoch) if until_epoch is not None else config.run.epochs
        while pos.epoch < last and not control.stopping:
            # A split held in CPU memory is gathered by the crop itself (Augmenter.train's index).
            source = run.train_batches.images if gathered_by_crop else None
            data = EpochData(pos.epoch, run.train_batches.epoch(pos.epoch, pos.batch, gather=source is None),
                             partial(_augment, run, pos.epoch, source), run.steps_per_epoch, pos.batch)
            pos.step, _ = train_one_epoch(train_step, data, pos.stats, pos.step,
                                          should_stop=partial(_after_step, run, pos, control, paths),
                                          progress=progress and process.is_main, world_size=process.world_size)
            if control.status == "interrupted":
                break
            counts = None
            if _validation_due(config.run, pos.epoch, control.stopping, last):
                counts = evaluate(eval_model, run.eval_batches, run.augmenter.center, store.num_classes,
                                  autocast=autocast, channels_last=channels_last,
                                  progress=progress and process.is_main, total=len(run.eval_batches))
            record, is_best = end_epoch(run, pos, counts, control.elapsed(), cut_short=control.stopping)
            every = config.run.checkpoint_every_epochs
            latest = control.stopping or pos.epoch >= last or bool(every and pos.epoch % every == 0)
            _save(run, pos, control, paths, latest=latest, best=is_best)
            logger.epoch(record, pos.metrics, _planned_epochs(run, pos))
    if control.status == "finished" and pos.epoch < config.run.epochs:
        control.status = "paused"  # until_epoch: the run goes on at the next call
    return _summary(control, pos, paths)


def _validation_due(run: RunConfig, epoch: int, stopping: bool, last: float) -> bool:
    """Validate after epoch `epoch` (0-based, just trained): every run.eval_every_epochs, and always at the
    end of the run or of the call (a stop, or epoch `last`, run.epochs or until_epoch; 0: only then)."""
    every = run.eval_every_epochs
    return stopping or epoch + 1 >= last or bool(every and (epoch + 1) % every == 0)


def _planned_epochs(run: Run, pos: Position) -> float:
    return round(pos.plan["total_steps"] / run.steps_per_epoch, 2) if pos.plan else run.config.run.epochs


def _augment(run: Run, epoch: int, source: torch.Tensor | None, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
    """The training batch `batch_idx` of `epoch`: `batch` is its images, or, with a `source` split, its
    indices into it."""
    gen = batch_generator(run.config.run.seed, epoch, batch_idx, run.process.device, run.process.rank)
    if source is not None:
        return run.augmenter.train(source, gen, index=batch)
    return run.augmenter.train(batch, gen)


def _after_step(run: Run, pos: Position, control: StopRules, paths: RunPaths, step: int, next_batch: int) -> bool:
    """The engine's should_stop: record the position, plan a budget, save when due; True to stop now."""
    pos.step, pos.batch = step, next_batch
    if run.config.run.plan_budget and pos.plan is None:
        _plan_budget(run, pos, control, paths)
    if control.poll(step, pos.plan):
        _save(run, pos, control, paths, latest=True)
    return control.stopping


def _plan_budget(run: Run, pos: Position, control: StopRules, paths: RunPaths) -> None:
    """Once enough steps are timed: time one validation pass and one save, then fix the run's total steps
    so that training, every epoch end and the reserve fit in run.budget_minutes (see `alexnet.budget`)."""
    step_s = control.timer.seconds_per_step(pos.step)
    if step_s is None:
        return
    eval_s = time_validation(run, control.clock)
    t0 = control.clock()
    _save(run, pos, control, paths, latest=True)
    plan = make_plan(run.config.run, pos.step, control.elapsed(), run.steps_per_epoch, step_s, eval_s,
                     control.clock() - t0)
    plan["total_steps"] = -int(all_reduce_max(torch.tensor([-plan["total_steps"]])).item())  # every rank: the least
    pos.plan = plan
    if isinstance(run.schedule, LinearSchedule):
        run.schedule.total_steps = plan["total_steps"]
    _save(run, pos, control, paths, latest=True)  # the plan is part of the run from here on
    if run.process.is_main:
        log.info(describe_plan(plan, run.steps_per_epoch))


def time_validation(run: Run, clock: Callable[[], float], batches: int = 2) -> float:
    """Seconds for this process's centre-crop validation pass, from timing `batches` batches after a first
    one that is not timed: the first inference batch also builds the kernels for its shapes, so timing it would
    overstate every later pass and keep too much of a budget for them."""
    start, t0, timed = clock(), None, 0
    autocast = autocast_context(run.process.device, run.config.run.precision)
    channels_last = run.config.run.channels_last
    assert channels_last is not None, "a Run's config is resolved (_fit sets run.channels_last)"
    for _ in islice(predict(run.unwrapped, run.eval_batches, run.augmenter.center, autocast=autocast,
                            channels_last=channels_last), batches + 1):
        if t0 is None:
            t0 = clock()  # the first batch is done
        else:
            timed += 1
    run.unwrapped.train()
    if not timed:  # a validation set of one batch: that batch is the whole pass
        return (t0 if t0 is not None else start) - start
    assert t0 is not None  # set by the first batch, before any was timed
    return (clock() - t0) / timed * len(run.eval_batches)


def _resume_state(paths: RunPaths, config: Config, resume: bool,
                  process: DistInfo) -> tuple[TrainingState | None, Config]:
    """The checkpoint to continue from, after checking that `config` continues the same run, and the config
    with the keys it leaves at their defaults that the checkpoint sets (`adopt_unset_keys`)."""
    if not paths.latest.exists():
        return None, config
    if not resume:
        raise FileExistsError(
            f"{paths.root} already holds a run ({paths.latest}); pass --resume to continue it "
            "or choose another --run-dir"
        )
    state = TrainingState.load(paths.latest)
    config = adopt_unset_keys(state.config, config)
    changed = resume_conflicts(state.config, config)
    if changed:
        raise ValueError(
            f"the config changes what {paths.latest} was trained on: {', '.join(changed)}; "
            f"resume with {paths.config}"
        )
    if not state.resumable:
        raise ValueError(f"{paths.latest} holds no optimizer or random state, so it cannot be resumed")
    assert state.rng is not None  # resumable: the random states are there
    if len(state.rng) != process.world_size:
        raise ValueError(
            f"{paths.latest} was written by {len(state.rng)} processes; resume with the same number "
            f"(got {process.world_size}) so every process gets its random state back"
        )
    return state, config


def _build(config: Config, process: DistInfo, store: Store, state: TrainingState | None,
           pretrained: str | os.PathLike[str] | None) -> Run:
    torch.manual_seed(config.run.seed + process.rank)  # dropout masks differ between data-parallel processes
    data = config.data
    common: dict[str, Any] = dict(rank=process.rank, world_size=process.world_size, device=process.device,
                                  workers=data.workers)
    train_batches = TrainBatches.from_store(
        store,
        in_memory=data.in_memory, batch_size=_per_process_batch(config, process.world_size),
        seed=config.run.seed, **common,
    )
    eval_batches = EvalBatches.from_store(
        store,
        in_memory=data.in_memory, batch_size=data.eval_batch_size, **common,
    )
    augmenter = Augmenter(data, store.mean, store.eigvals, store.eigvecs, process.device,
                          channels_last=bool(config.run.channels_last))  # batches in the layout the net takes
    model = build_model(config.model)
    if state is not None:
        model.load_state_dict(state.model)
    elif pretrained is not None:
        fresh = load_pretrained(model, pretrained)
        if process.is_main:
            log.info(f"{config.model.name} from {pretrained}: every weight but {', '.join(fresh)}, which start "
                     f"fresh for {config.model.num_classes} classes")
    model, unwrapped = place_model(model, config.run, process)
    optim = config.optim
    groups = parameter_groups(unwrapped, optim.weight_decay, optim.decay_biases, optim.bias_lr_scale)
    optimizer = build_optimizer(groups, optim.kind, optim.lr, optim.momentum, optim.weight_decay)
    steps = len(train_batches)
    planned = state.plan["total_steps"] if state is not None and state.plan else 0
    schedule = build_schedule(config.schedule, optim.lr, steps, planned or config.run.epochs * steps)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        schedule.load_state_dict(state.schedule)
    return Run(config, process, store, train_batches, eval_batches, augmenter, model, unwrapped, optimizer,
               schedule)


def _position(state: TrainingState | None, process: DistInfo, paths: RunPaths) -> Position:
    if state is None:
        return Position()
    assert state.rng is not None, "_resume_state returns only resumable states"
    set_rng_state(state.rng[process.rank])
    if process.is_main:
        log.info(f"resuming from {paths.latest}: epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")
    metrics = [m for m in state.metrics if not m.get("partial")]
    stats = EpochStats(**state.epoch_stats)
    return Position(state.epoch, state.batch, state.step, state.best, metrics, stats, state.plan)


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


def end_epoch(
    run: Run, pos: Position, counts: Counts | None, wall: float, cut_short: bool
) -> tuple[dict[str, Any], bool]:
    """Record the epoch's metrics (validation ones None when `counts` is None: not validated); a whole epoch
    also steps the schedule (on the validation error) and moves the position to the next epoch.
    Returns (the record, whether it is the best so far)."""
    record = _epoch_record(run, pos, counts, wall)
    val_error = counts.top1_error if counts is not None else None
    if cut_short and pos.batch < run.steps_per_epoch:
        record["partial"] = True  # a budget ended the epoch early: reported, not counted as an epoch
    else:
        run.schedule.epoch_end(pos.epoch, val_error)
        pos.epoch, pos.batch, pos.stats = pos.epoch + 1, 0, EpochStats()
    pos.metrics.append(record)
    is_best = val_error is not None and val_error < pos.best
    pos.best = min(pos.best, val_error) if val_error is not None else pos.best
    return record, is_best


def _epoch_record(run: Run, pos: Position, counts: Counts | None, wall: float) -> dict[str, Any]:
    stats = pos.stats
    sums = all_reduce_sum(torch.tensor([stats.loss_sum, stats.errors, stats.images], dtype=torch.float64))
    loss_sum, errors, images = sums.tolist()
    seconds = float(all_reduce_max(torch.tensor([stats.seconds], dtype=torch.float64)).item())
    return {
        "epoch": round(pos.epoch + pos.batch / run.steps_per_epoch, 4),
        "train_loss": loss_sum / max(images, 1),
        "train_error": errors / max(images, 1),
        "val_top1_error": counts.top1_error if counts is not None else None,
        "val_top5_error": counts.top5_error if counts is not None else None,
        "val_images": counts.images if counts is not None else 0,
        "lr": run.schedule.lr(pos.step - 1),
        "images_per_s": images / seconds if seconds else 0.0,
        "wall_time_s": wall,
        "world_size": run.process.world_size,
    }


def _save(run: Run, pos: Position, control: StopRules, paths: RunPaths, latest: bool, best: bool = False) -> None:
    """Write latest.pt and/or best.pt. Every process takes part: the random states are gathered."""
    state = TrainingState(
        model=single_state_dict(run.unwrapped),
        config=run.config,
        classes=list(run.store.classes),
        class_names=list(run.store.class_names),
        mean=torch.from_numpy(run.store.mean),
        epoch=pos.epoch,
        batch=pos.batch,
        step=pos.step,
        best=pos.best,
        elapsed=control.elapsed(),
        metrics=list(pos.metrics),
        epoch_stats=pos.stats.state_dict(),
        schedule=run.schedule.state_dict(),
        optimizer=run.optimizer.state_dict(),
        rng=all_gather_objects(rng_state()),
        plan=pos.plan,
    )
    if run.process.is_main:
        if latest:
            state.save(paths.latest)
        if best:
            state.for_inference().save(paths.best)
    control.last_save = control.clock()


def _summary(control: StopRules, pos: Position, paths: RunPaths) -> dict[str, Any]:
    return {
        "status": control.status,
        "signal": control.stopper.signum,
        "epoch": pos.epoch,
        "step": pos.step,
        "last": pos.metrics[-1] if pos.metrics else None,
        "best_top1_error": pos.best,
        "run_dir": str(paths.root),
        "latest": str(paths.latest),
        "best": str(paths.best),
        "metrics": str(paths.metrics),
        "plot": str(paths.plot),
    }


def finetune(
    config: Config,
    run_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    resume: bool = False,
    progress: bool = True,
    model_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune: start from `checkpoint`'s weights (trained on one label set), with a fresh classifier
    sized for `config`'s store, and train every layer on it (the paper's "CNN*" rows, Section 6).
    The network is the checkpoint's (see `finetune_config`)."""
    config = finetune_config(config, checkpoint, model_overrides)
    return fit(config, run_dir, resume=resume, pretrained=checkpoint, progress=progress)
