"""The paper's optimiser and learning-rate schedules (Section 5)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable

import torch

from alexnet import native


class PaperSGD(torch.optim.Optimizer):
    """Section 5's update rule, with the learning rate inside the velocity:

        v <- momentum * v - weight_decay * lr * w - lr * dL/dw
        w <- w + v

    torch.optim.SGD keeps lr outside the velocity (v <- m v + g + wd w; w <- w - lr v), which agrees with
    this only while lr is constant: after a drop, the paper's velocity still carries the old rate's steps
    and decays them by momentum, whereas torch's rescales the whole velocity at once.

    ``fused`` (default: where possible) updates float32 CPU parameters with one C++ pass over memory
    (``csrc/sgd.cpp``, built on first use; 24.5 instead of 52.7 ms a step for the paper's network on a
    2-core machine, `benchmarks/optimizer.py`), with the same arithmetic and rounding as the tensor operations
    used everywhere else (``fused=False``, other devices and dtypes, where no compiler is available or where
    torch's kernels round a multiply-add twice, see `alexnet.native.vector_fma`): identical weights.
    """

    def __init__(
        self, params: Iterable, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0005,
        fused: bool | None = None,
    ):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(
                f"PaperSGD: lr={lr}, momentum={momentum}, weight_decay={weight_decay} out of range"
            )
        if fused and not fused_sgd_available():
            raise RuntimeError(f"PaperSGD(fused=True): the fused update is not available: {fused_sgd_unavailable()}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.fused = fused

    fused: bool | None = None  # what a copy or an unpickled optimizer uses (Optimizer's state omits it)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                v = self.state[p].get("velocity")
                if v is None:
                    self.state[p]["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif v.shape == p.shape and v.stride() != p.stride():  # from a checkpoint of the other layout:
                    self.state[p]["velocity"] = torch.empty_like(p).copy_(v)  # laid out as p, same values
            fused = [self._fusable(p) for p in params]
            if any(fused):
                ps = [p for p, f in zip(params, fused, strict=True) if f]
                torch.ops.alexnet_sgd.paper_step(ps, [p.grad for p in ps], [self.state[p]["velocity"] for p in ps],
                                                 lr, momentum, wd)
                torch.autograd.graph.increment_version(ps)  # as an in-place tensor operation would
            rest = [p for p, f in zip(params, fused, strict=True) if not f]
            if rest:
                velocities = [self.state[p]["velocity"] for p in rest]
                torch._foreach_mul_(velocities, momentum)
                torch._foreach_add_(velocities, rest, alpha=-wd * lr)
                torch._foreach_add_(velocities, [p.grad for p in rest], alpha=-lr)
                torch._foreach_add_(rest, velocities)
        return loss

    def _fusable(self, p: torch.Tensor) -> bool:
        """Whether the C++ pass can update `p`: a dense float32 CPU tensor whose gradient and velocity are
        laid out as it is (channels-last weights included)."""
        g, v = p.grad, self.state[p]["velocity"]
        if (self.fused is False or p.device.type != "cpu" or p.dtype != torch.float32 or g is None
                or g.layout != torch.strided or g.dtype != torch.float32 or g.stride() != p.stride()
                or not (p.is_contiguous() or p.is_contiguous(memory_format=torch.channels_last))):
            return False
        if v.device != p.device or v.dtype != p.dtype or v.shape != p.shape or v.stride() != p.stride():
            return False
        return fused_sgd_available()


@functools.cache
def fused_sgd_unavailable() -> str | None:
    """Build (once per machine and source version) and load the fused update: None, or why it cannot run
    here (then PaperSGD uses tensor operations, with the same numbers)."""
    return native.fused_pass("alexnet_sgd", native.CSRC / "sgd.cpp", "the fused SGD update",
                             "tensor operations (same numbers, about twice the time of the update on the CPU)")


def fused_sgd_available() -> bool:
    return fused_sgd_unavailable() is None


def build_optimizer(params: Iterable, kind: str, lr: float, momentum: float, weight_decay: float):
    """ "paper" -> PaperSGD; "sgd" -> torch.optim.SGD with the same hyper-parameters."""
    if kind == "paper":
        return PaperSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer kind {kind!r} is not 'paper' or 'sgd'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at `lr`, times the group's ``lr_scale`` where it has one (a model's own groups)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def parameter_groups(model: torch.nn.Module, weight_decay: float, decay_biases: bool = True,
                     bias_lr_scale: float = 1.0) -> list:
    """What the optimiser trains.

    The model's own groups when it defines ``optimizer_groups(weight_decay)`` (per-layer weight decay and a
    bias rate from a layer-params file). Otherwise every parameter at `weight_decay` in one group, unless
    biases are set apart: `decay_biases` False gives them no weight decay (cuda-convnet's `wc` decays
    weights only), `bias_lr_scale` multiplies their learning rate (``lr_scale``, applied by `set_lr`).
    """
    if hasattr(model, "optimizer_groups"):
        return model.optimizer_groups(weight_decay)
    if decay_biases and bias_lr_scale == 1.0:
        return list(model.parameters())  # one group, as checkpoints written before the choice existed hold
    named = list(model.named_parameters())
    biases = [p for name, p in named if name.endswith("bias")]
    weights = [p for name, p in named if not name.endswith("bias")]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": weight_decay if decay_biases else 0.0, "lr_scale": bias_lr_scale},
    ]


class Schedule:
    """Base of the schedules: a rate for each optimizer step, updated once per epoch from the
    validation error; an optional linear warm-up over the first `warmup_steps` steps (not the paper's).
    """

    def __init__(self, lr: float, warmup_steps: int = 0):
        self.base_lr = lr
        self.warmup_steps = warmup_steps
        self.scale = 1.0

    def lr(self, step: int) -> float:
        """The rate for optimizer step `step` (0-based, counted over the whole run)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.base_lr * self.scale * warm * self._decay(step)

    def _decay(self, step: int) -> float:
        return 1.0

    def epoch_end(self, epoch: int, val_error: float | None) -> None:
        """Called after epoch `epoch` (0-based) has been trained and evaluated (None: not validated)."""

    # What training changes (and a checkpoint carries). The hyper-parameters (rate, warm-up, length,
    # factor, patience, ...) are not state: a resumed run takes them from its config.
    _state_keys: tuple[str, ...] = ("scale",)

    def state_dict(self) -> dict:
        return copy.deepcopy({k: getattr(self, k) for k in self._state_keys})

    def load_state_dict(self, state: dict) -> None:
        unknown = [k for k in state if k not in vars(self)]
        missing = [k for k in self._state_keys if k not in state]
        if unknown or missing:
            problem = f"has no state {unknown}" if unknown else f"lacks state {missing}"
            raise KeyError(f"{type(self).__name__} {problem}; was this saved by another schedule?")
        # Hyper-parameters that older checkpoints carried are ignored: the config's values win.
        for key in self._state_keys:
            value = state[key]
            setattr(self, key, copy.deepcopy(list(value) if isinstance(value, tuple) else value))


class PlateauSchedule(Schedule):
    """Section 5: "divide the learning rate by 10 when the validation error rate stopped improving with
    the current learning rate", which the paper did three times. An epoch improves when its error is
    below the best so far; after `patience` epochs without improvement the rate is multiplied by `factor`
    and the count restarts. `max_drops` bounds the number of drops.
    """

    def __init__(
        self, lr: float, factor: float = 0.1, patience: int = 5, max_drops: int = 3, warmup_steps: int = 0
    ):
        super().__init__(lr, warmup_steps)
        self.factor = factor
        self.patience = patience
        self.max_drops = max_drops
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops: list[int] = []

    _state_keys = ("scale", "best", "bad_epochs", "drops")

    def epoch_end(self, epoch: int, val_error: float) -> None:
        if val_error < self.best:
            self.best = val_error
            self.bad_epochs = 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience and len(self.drops) < self.max_drops:
            self.scale *= self.factor
            self.drops.append(epoch)
            self.bad_epochs = 0


class StepSchedule(Schedule):
    """Multiply the rate by `factor` after each epoch listed in `milestones` (1-based epoch counts:
    milestone 30 means epochs 31 onwards run at the lower rate)."""

    def __init__(
        self, lr: float, factor: float = 0.1, milestones: Iterable[int] = (30, 60, 80), warmup_steps: int = 0
    ):
        super().__init__(lr, warmup_steps)
        self.factor = factor
        self.milestones = sorted(milestones)
        self.epochs_done = 0

    _state_keys = ("scale", "epochs_done")

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scale = self.factor ** sum(m <= self.epochs_done for m in self.milestones)  # this config's

    def epoch_end(self, epoch: int, val_error: float | None) -> None:
        self.epochs_done = epoch + 1
        self.scale = self.factor ** sum(m <= self.epochs_done for m in self.milestones)


class LinearSchedule(Schedule):
    """Linear decay to zero at step `total_steps` (not the paper's): for short, budgeted runs, where a
    plateau never comes."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0):
        super().__init__(lr, warmup_steps)
        if total_steps <= 0:
            raise ValueError(f"LinearSchedule needs total_steps > 0, got {total_steps}")
        self.total_steps = total_steps

    def _decay(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total_steps)


def build_schedule(cfg, lr: float, steps_per_epoch: int, total_steps: int) -> Schedule:
    """The schedule a `ScheduleConfig` describes; `total_steps` is the run's last step (for "linear")."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.kind == "plateau":
        return PlateauSchedule(lr, cfg.factor, cfg.patience, cfg.max_drops, warmup)
    if cfg.kind == "step":
        return StepSchedule(lr, cfg.factor, cfg.milestones, warmup)
    if cfg.kind == "linear":
        return LinearSchedule(lr, total_steps, warmup)
    raise ValueError(f"schedule kind {cfg.kind!r} is not 'plateau', 'step' or 'linear'")
