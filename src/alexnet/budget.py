"""Turning a time budget into a number of steps, once, from speeds measured early in the run.

A schedule that anneals over epochs that never come (a 7-epoch linear decay cut off after 3.4 epochs on
a slow machine) wastes the budget: the rate never gets low. So a budgeted run (`run.plan_budget`) times
its first steps, one validation pass and one checkpoint save, and then fixes how many steps fit in what
is left of `run.budget_minutes`, counting an evaluation and a save at every epoch end, the time kept for
work after training (the demo's ten-crop evaluation) and a margin. The number is stored in the
checkpoint, so a resumed run keeps the same schedule; a faster machine simply trains more steps.
"""

from __future__ import annotations

from dataclasses import dataclass

# Steps timed before the plan is made: the first two are slower (allocations, caches) and are skipped.
PLAN_SKIP_STEPS = 2
PLAN_AT_STEP = 12


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
