"""The training and evaluation loops, nothing else (Section 5's SGD steps; Section 4.1's test crops)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

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


@dataclass
class EpochStats:
    """Running sums of one epoch on this process (checkpointed, so a resumed epoch reports all of it)."""

    loss_sum: float = 0.0
    errors: int = 0
    images: int = 0
    steps: int = 0
    seconds: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)


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


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
    augment: Callable[[torch.Tensor, int], torch.Tensor],
    *,
    epoch: int,
    step: int,
    lr_at: Callable[[int], float],
    stats: EpochStats,
    total: int,
    start_batch: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    channels_last: bool = False,
    label_smoothing: float = 0.0,
    world_size: int = 1,
    should_stop: Callable[[int, int], bool] | None = None,
    progress: bool = True,
) -> tuple[int, bool]:
    """Train on `batches` ((batch index, uint8 images, labels) from the loader) until they run out.

    Each step sets the rate `lr_at(step)`, augments the uint8 batch with `augment(images, batch_index)`,
    and checks the loss before the update: a NaN or infinite loss on any process raises
    NonFiniteLossError naming the step, with the weights as they were. After each update
    `should_stop(step, next_batch_index)` is asked whether to end the epoch early (budgets, signals).

    Returns (the step count after the last update, whether should_stop ended the epoch).
    `stats` accumulates this process's loss sum, top-1 errors, images and time.
    """
    model.train()
    ctx = autocast or contextlib.nullcontext()
    bar = progress_bar(total, start_batch, f"epoch {epoch + 1}", progress)
    stopped = False
    tick = time.perf_counter()
    try:
        for batch_idx, images, labels in batches:
            lr = lr_at(step)
            set_lr(optimizer, lr)
            x = augment(images, batch_idx)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with ctx:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
            bad = all_reduce_max((~torch.isfinite(loss.detach())).to(torch.int32).view(1))
            if bad.item():
                raise NonFiniteLossError(step, epoch, batch_idx, loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            n = labels.shape[0]
            stats.loss_sum += loss.item() * n
            stats.errors += int((logits.argmax(1) != labels).sum())
            stats.images += n
            stats.steps += 1
            now = time.perf_counter()
            stats.seconds += now - tick
            tick = now
            bar.update(1)
            bar.set_postfix(
                loss=f"{stats.loss_sum / stats.images:.3f}",
                err=f"{stats.errors / stats.images:.3f}",
                lr=f"{lr:.3g}",
                img_s=f"{stats.images * world_size / max(stats.seconds, 1e-9):.1f}",
            )
            if should_stop is not None and should_stop(step, batch_idx + 1):
                stopped = True
                break
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
