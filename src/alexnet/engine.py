"""The training and evaluation loops, nothing else (Section 5's SGD steps; Section 4.1's test crops)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from alexnet.distributed import all_reduce_max, all_reduce_sum
from alexnet.errors import NonFiniteLossError
from alexnet.optim import set_lr


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The one autocast context of a run: bf16 autocast when asked for, else nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU, which runs each operation as it is called)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The loop reads its numbers back from the device (loss, errors, the non-finite check) only every this many
# steps, at the epoch's end and before a checkpoint: each read waits for the device to finish, which costs a
# GPU most where a step is short. The progress bar's loss is at most this many steps old.
SYNC_EVERY = 20


@dataclass
class EpochStats:
    """Running sums of one epoch on this process (checkpointed, so a resumed epoch reports all of it).

    The loss and error sums of the latest steps stay on the device until `sync` folds them in; `sync` also
    raises NonFiniteLossError for the first step whose loss was NaN or infinite on any process. Reading the
    sums for a checkpoint (`state_dict`) syncs first, so no checkpoint is written after a non-finite loss.
    """

    loss_sum: float = 0.0
    errors: int = 0
    images: int = 0
    steps: int = 0
    seconds: float = 0.0
    _pending: torch.Tensor | None = field(default=None, repr=False, compare=False)  # loss sum, errors
    _first_bad: torch.Tensor | None = field(default=None, repr=False, compare=False)  # step, loss (NaN: none)
    _where: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, step: int, epoch: int,
            batch: int) -> None:
        """Count one step (the run's optimizer step `step`, at `batch` of `epoch`) without waiting for the
        device."""
        n = labels.shape[0]
        loss = loss.detach().double()
        sums = torch.stack([loss * n, (logits.detach().argmax(1) != labels).sum().double()])
        self._pending = sums if self._pending is None else self._pending + sums
        if self._first_bad is None:
            self._first_bad = torch.full((2,), math.nan, dtype=torch.float64, device=loss.device)
        here = torch.stack([torch.full_like(loss, step), loss])
        self._first_bad = torch.where(~torch.isfinite(loss) & self._first_bad[0].isnan(), here, self._first_bad)
        self._where[step] = (epoch, batch)
        self.images += n
        self.steps += 1

    def sync(self) -> None:
        """Fold the device sums in (one read from the device); raise NonFiniteLossError for the earliest step
        whose loss was not finite on any process."""
        if self._pending is None:
            return
        own = self._first_bad
        earliest = all_reduce_max(-torch.where(own[0].isnan(), torch.inf, own[0]).view(1))  # -(earliest step)
        loss_sum, errors, neg_step, own_step, own_loss = torch.cat([self._pending, earliest, own]).tolist()
        where = self._where
        self._pending, self._first_bad, self._where = None, None, {}
        self.loss_sum += loss_sum
        self.errors += int(errors)
        if not math.isinf(neg_step):
            step = int(-neg_step)
            epoch, batch = where[step]
            raise NonFiniteLossError(step, epoch, batch, own_loss if own_step == step else math.nan)

    def state_dict(self) -> dict:
        self.sync()
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    # disable=None lets tqdm switch itself off when stderr is not a terminal
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="batch",
        dynamic_ncols=True,
        leave=False,
        disable=None if enabled else True,
    )


@dataclass
class TrainStep:
    """One step of Section 5's SGD: set the rate, forward under the run's precision, loss, backward, update.

    ``lr_at(step)`` gives the rate of optimizer step ``step``; ``autocast`` is the run's one precision
    context (`autocast_context`); ``channels_last`` feeds the network NHWC batches.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_at: Callable[[int], float]
    autocast: contextlib.AbstractContextManager | None = None
    channels_last: bool = False
    label_smoothing: float = 0.0

    def __call__(self, step: int, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one augmented batch; returns the loss and the logits, left on the device."""
        set_lr(self.optimizer, self.lr_at(step))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast or contextlib.nullcontext():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits


@dataclass
class EpochData:
    """One epoch's batches: (batch index, uint8 images, labels) from the loader, how to augment one
    (``augment(images, batch_index)``), and where in the epoch they start."""

    epoch: int
    batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]]
    augment: Callable[[torch.Tensor, int], torch.Tensor]
    total: int  # batches in a whole epoch
    start_batch: int = 0


def train_one_epoch(
    train_step: TrainStep,
    data: EpochData,
    stats: EpochStats,
    step: int,
    should_stop: Callable[[int, int], bool] | None = None,
    progress: bool = True,
    world_size: int = 1,
) -> tuple[int, bool]:
    """Train on `data` until its batches run out, counting into `stats`; `step` is the run's step count.

    After each update `should_stop(step, next_batch_index)` is asked whether to end the epoch early (budgets,
    signals; it syncs `stats` itself before it saves). The loss and error counts are read back from the
    device only every SYNC_EVERY steps and at the end, where a NaN or infinite loss on any process raises
    NonFiniteLossError naming its step; the checkpoint on disk then predates it.

    Returns (the step count after the last update, whether should_stop ended the epoch).
    """
    train_step.model.train()
    bar = progress_bar(data.total, data.start_batch, f"epoch {data.epoch + 1}", progress)
    stopped = False
    tick = time.perf_counter()
    try:
        for batch_idx, images, labels in data.batches:
            loss, logits = train_step(step, data.augment(images, batch_idx), labels)
            stats.add(loss, logits, labels, step, data.epoch, batch_idx)
            step += 1
            now = time.perf_counter()
            stats.seconds += now - tick
            tick = now
            bar.update(1)
            if stats.steps % SYNC_EVERY == 0:
                stats.sync()
                bar.set_postfix(
                    loss=f"{stats.loss_sum / stats.images:.3f}",
                    err=f"{stats.errors / stats.images:.3f}",
                    lr=f"{train_step.lr_at(step - 1):.3g}",
                    img_s=f"{stats.images * world_size / max(stats.seconds, 1e-9):.1f}",
                )
            if should_stop is not None and should_stop(step, batch_idx + 1):
                stopped = True
                break
        stats.sync()
    finally:
        bar.close()
    return step, stopped


@dataclass
class Counts:
    """Exact evaluation counts: per class, images, top-1 hits and top-5 hits. Sums over processes."""

    total: torch.Tensor  # (C,) int64
    top1: torch.Tensor  # (C,) int64
    top5: torch.Tensor  # (C,) int64

    @classmethod
    def zeros(cls, num_classes: int) -> Counts:
        return cls(*torch.zeros(3, num_classes, dtype=torch.int64))

    def add(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        k = min(5, probs.shape[1])
        topk = probs.topk(k, dim=1).indices.cpu()
        labels = labels.cpu()
        hit1 = topk[:, 0] == labels
        hit5 = (topk == labels[:, None]).any(1)
        c = self.total.numel()
        self.total += torch.bincount(labels, minlength=c)
        self.top1 += torch.bincount(labels[hit1], minlength=c)
        self.top5 += torch.bincount(labels[hit5], minlength=c)

    def all_reduce(self) -> Counts:
        """Sum over torchrun processes; each evaluated a disjoint part, so the sum counts every image once."""
        stacked = all_reduce_sum(torch.stack([self.total, self.top1, self.top5]))
        return Counts(*stacked)

    @property
    def images(self) -> int:
        return int(self.total.sum())

    @property
    def top1_error(self) -> float:
        return 1.0 - int(self.top1.sum()) / max(self.images, 1)

    @property
    def top5_error(self) -> float:
        return 1.0 - int(self.top5.sum()) / max(self.images, 1)


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    views: Callable[[torch.Tensor], torch.Tensor],
    *,
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Softmax probabilities (B, C) in float32 for each (uint8 images, labels) batch.

    `views(images)` gives (B, 3, c, c) for one crop or (B, V, 3, c, c) for several (ten-crop); the
    softmax outputs of the V views are averaged (Section 4.1). All V views of a batch are built at once,
    so ten-crop holds a float32 (B, 10, 3, c, c) input, 10 x 3 x c x c x 4 bytes an image (6 MB at
    c = 224, 1.5 GB for B = 256); the network then runs on one view at a time, so its activations are
    those of a B-image batch.
    """
    model.eval()
    ctx = autocast or contextlib.nullcontext()
    bar = progress_bar(total or 0, 0, "eval", progress)
    try:
        for images, labels in batches:
            x = views(images)
            crops = x.unbind(1) if x.dim() == 5 else (x,)
            probs = None
            for crop in crops:
                if channels_last:
                    crop = crop.contiguous(memory_format=torch.channels_last)
                with ctx:
                    logits = model(crop)
                p = logits.float().softmax(1)
                probs = p if probs is None else probs + p
            bar.update(1)
            yield probs / len(crops), labels
    finally:
        bar.close()


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    views: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    **kwargs,
) -> Counts:
    """Top-1 / top-5 counts over every image of `batches`, summed over torchrun processes (exact: each
    process sees a disjoint part and nothing is padded). kwargs go to `predict`."""
    counts = Counts.zeros(num_classes)
    for probs, labels in predict(model, batches, views, **kwargs):
        counts.add(probs, labels)
    return counts.all_reduce()
