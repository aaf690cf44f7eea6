"""When a run stops: signals, step and time budgets, and a time budget turned into a number of steps.

A schedule that anneals over epochs that never come (a 7-epoch linear decay cut off after 3.4 epochs on
a slow machine) wastes the budget: the rate never gets low. So a budgeted run (`run.plan_budget`) times
its first steps, one validation pass and one checkpoint save, and then fixes how many steps fit in what
is left of `run.budget_minutes`, counting an evaluation and a save at every epoch end, the time kept for
work after training (the demo's ten-crop evaluation) and a margin. The number is stored in the
checkpoint, so a resumed run keeps the same schedule; a faster machine simply trains more steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from alexnet.config import RunConfig
from alexnet.distributed import all_reduce_max
from alexnet.signals import StopSignal

# Steps timed before the plan is made (about 25 s of a CPU demo). The first four are not timed: allocations,
# caches and oneDNN choosing its kernels make them slower than the steady state (the second step can still
# run conv1 at several times its later speed), and timing them would plan too few steps.
PLAN_SKIP_STEPS = 4
PLAN_AT_STEP = 26
# Logging an epoch (metrics, TensorBoard, redrawing the curves) on top of its validation and save.
EPOCH_END_OVERHEAD_S = 2.0


@dataclass(frozen=True)
class Costs:
    """What the rest of a run costs, in seconds, as measured on this machine."""

    step_s: float  # one training step
    epoch_end_s: float  # the validation pass, checkpoint save and logging at each epoch end
    reserve_s: float  # kept for after training (e.g. a ten-crop evaluation)
    margin_s: float  # slack for what was not measured


def training_seconds(step: int, total: int, steps_per_epoch: int, costs: Costs) -> float:
    """Seconds from optimizer step `step` to the end of training at step `total`, epoch ends included
    (the last, partial or not, is evaluated too)."""
    ends = total // steps_per_epoch - step // steps_per_epoch + (1 if total % steps_per_epoch else 0)
    return (total - step) * costs.step_s + ends * costs.epoch_end_s


def plan_total_steps(seconds_left: float, step: int, steps_per_epoch: int, costs: Costs, max_steps: int) -> int:
    """The largest total step count (at least `step`, at most `max_steps`) whose remaining training plus
    the reserve and the margin fits in `seconds_left`."""
    available = seconds_left - costs.reserve_s - costs.margin_s
    lo, hi = step, max(step, max_steps)
    while lo < hi:  # training_seconds grows with the total: find the last total that fits
        mid = (lo + hi + 1) // 2
        if training_seconds(step, mid, steps_per_epoch, costs) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class StepTimer:
    """Times the training steps from step PLAN_SKIP_STEPS (of the run, or after a resume) on.

    `sync` waits for the device at the two ends of the window: the loop does not wait for it every step, so
    on a GPU the clock alone would time the host's queueing of the steps.
    """

    clock: Callable[[], float]
    sync: Callable[[], None] = lambda: None
    mark: tuple[int, float] | None = None

    def seconds_per_step(self, step: int) -> float | None:
        """After optimizer step `step`: the measured seconds a step once enough steps were timed, else None."""
        if self.mark is None:
            if step >= PLAN_SKIP_STEPS:
                self.sync()
                self.mark = (step, self.clock())
            return None
        timed = step - self.mark[0]
        if timed < PLAN_AT_STEP - PLAN_SKIP_STEPS:
            return None
        self.sync()
        return (self.clock() - self.mark[1]) / timed


def make_plan(run: RunConfig, step: int, elapsed_s: float, steps_per_epoch: int, step_s: float, eval_s: float,
              save_s: float) -> dict:
    """The plan of a budgeted run from its measured costs: a validation pass `eval_s`, a save `save_s`."""
    budget_s = 60 * run.budget_minutes
    every = run.eval_every_epochs  # validations are spread over the epoch ends; the last one is always made
    costs = Costs(
        step_s=step_s,
        epoch_end_s=(eval_s / every if every else 0.0) + save_s + EPOCH_END_OVERHEAD_S,
        reserve_s=(10 * eval_s if run.reserve_ten_crop else 0.0) + (0.0 if every == 1 else eval_s),
        margin_s=0.01 * budget_s + 3.0,
    )
    total = plan_total_steps(budget_s - elapsed_s, step, steps_per_epoch, costs, run.epochs * steps_per_epoch)
    return {"total_steps": total, "planned_at_step": step, "reserve_s": costs.reserve_s, "budget_s": budget_s,
            "costs": asdict(costs)}


def describe_plan(plan: dict, steps_per_epoch: int) -> str:
    c = plan["costs"]
    return (f"budget plan: {plan['total_steps']} steps ({plan['total_steps'] / steps_per_epoch:.2f} epochs) in "
            f"{plan['budget_s'] / 60:g} min at {c['step_s']:.2f} s a step, {c['epoch_end_s']:.0f} s per epoch end, "
            f"{c['reserve_s']:.0f} s kept for evaluating after training")


@dataclass
class StopRules:
    """Why the loop stops (a signal, a budget) and when it saves (the checkpoint intervals)."""

    run: RunConfig
    stopper: StopSignal
    clock: Callable[[], float]  # time.monotonic, or a fake one in tests
    started: float  # the clock's reading at which the run's time was zero (earlier, for a resumed run)
    last_save: float
    status: str = "finished"  # becomes "interrupted" (a signal) or "budget" (time or steps ran out)
    device_sync: Callable[[], None] = lambda: None  # waits for the training device (the step timer's ends)
    timer: StepTimer = field(init=False)  # times the first steps for a budget plan

    def __post_init__(self) -> None:
        self.timer = StepTimer(self.clock, self.device_sync)

    @property
    def stopping(self) -> bool:
        return self.status != "finished"

    def elapsed(self) -> float:
        return self.clock() - self.started

    def poll(self, step: int, plan: dict | None) -> bool:
        """After optimizer step `step`: update the status (agreed by every process); True if a save is due."""
        run, now = self.run, self.clock()
        reserve = plan["reserve_s"] if plan else 0.0  # kept for the work after training
        flags = torch.tensor(
            [
                self.stopper.signum or 0,
                bool(run.budget_minutes) and now - self.started >= 60 * run.budget_minutes - reserve,
                bool(run.checkpoint_every_minutes) and now - self.last_save >= 60 * run.checkpoint_every_minutes,
            ],
            dtype=torch.int64,
        )
        signum, out_of_time, save_due = all_reduce_max(flags).tolist()
        planned = plan["total_steps"] if plan else 0
        if signum:
            self.status, self.stopper.signum = "interrupted", signum
        elif out_of_time or (run.budget_steps and step >= run.budget_steps) or (planned and step >= planned):
            self.status = "budget"
        every = run.checkpoint_every_steps
        return self.stopping or bool(save_due) or bool(every and step % every == 0)
