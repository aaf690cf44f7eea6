"""The budget plan: how many steps fit, on a machine of any speed, and a budgeted run under a fake clock."""

import itertools

import pytest

from alexnet.budget import PLAN_AT_STEP, Costs, plan_total_steps, training_seconds
from alexnet.checkpoint import TrainingState
from alexnet.train import fit
from helpers_train import make_store, tiny_config


@pytest.mark.parametrize("slowdown", [1.0, 2.0])
def test_the_plan_is_the_most_steps_that_fit(slowdown):
    costs = Costs(step_s=1.5 * slowdown, epoch_end_s=20.0 * slowdown, reserve_s=190.0 * slowdown, margin_s=20.0)
    seconds_left, step, spe = 840.0, 12, 73
    total = plan_total_steps(seconds_left, step, spe, costs, max_steps=90 * spe)
    used = training_seconds(step, total, spe, costs) + costs.reserve_s + costs.margin_s
    assert used <= seconds_left < training_seconds(step, total + 1, spe, costs) + costs.reserve_s + costs.margin_s
    assert total > step


def test_the_plan_counts_every_epoch_end_and_stops_at_the_cap():
    costs = Costs(step_s=1.0, epoch_end_s=10.0, reserve_s=0.0, margin_s=0.0)
    assert training_seconds(0, 20, 10, costs) == 20 + 2 * 10  # two whole epochs
    assert training_seconds(0, 25, 10, costs) == 25 + 3 * 10  # and the partial third is evaluated too
    assert plan_total_steps(1e9, 0, 10, costs, max_steps=50) == 50
    assert plan_total_steps(5.0, 7, 10, costs, max_steps=50) == 7  # nothing fits: stop where we are


class FakeClock:
    """Advances by `tick` seconds every time it is read: a machine whose every step costs a few ticks."""

    def __init__(self, tick: float):
        self.tick = tick
        self.now = itertools.count()

    def __call__(self) -> float:
        return next(self.now) * self.tick


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("budget"))


@pytest.mark.parametrize("tick", [0.5, 1.0])  # the second machine is twice as slow
def test_a_budgeted_run_plans_anneals_and_ends_within_its_budget(store, tmp_path, tick):
    budget_min = 2.0
    config = tiny_config(store, "schedule.kind=linear", "run.epochs=50", f"run.budget_minutes={budget_min}",
                         "run.plan_budget=true", "run.reserve_ten_crop=true")
    summary = fit(config, tmp_path / "run", progress=False, clock=FakeClock(tick))
    state = TrainingState.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    plan = state.plan
    assert summary["status"] == "budget" and summary["step"] == plan["total_steps"]
    assert plan["reserve_s"] > 0 and plan["planned_at_step"] == PLAN_AT_STEP
    assert summary["last"]["wall_time_s"] <= 60 * budget_min - plan["reserve_s"]  # the reserve is left
    assert summary["last"]["lr"] < 0.01 * 0.05  # annealed to (nearly) zero at the planned step



def test_the_validation_estimate_leaves_out_the_first_batch(monkeypatch):
    """The first inference batch also builds its kernels: timing it would keep too much for the ten crops."""
    from types import SimpleNamespace

    import alexnet.train as train

    now = [0.0]
    costs = iter([100.0, 1.0, 1.0, 1.0])  # seconds of each validation batch: the first is slow

    def predict(*args, **kwargs):
        for cost in costs:
            now[0] += cost
            yield None

    monkeypatch.setattr(train, "predict", predict)
    run = SimpleNamespace(process=SimpleNamespace(device="cpu"), unwrapped=SimpleNamespace(train=lambda: None),
                          config=SimpleNamespace(run=SimpleNamespace(precision="fp32", channels_last=False)),
                          eval_batches=[None] * 16, augmenter=SimpleNamespace(center=None))
    assert train.time_validation(run, lambda: now[0], batches=2) == 16.0  # 16 batches of 1 s, not 16 x 50.5


@pytest.mark.slow
def test_a_slower_machine_plans_fewer_steps(store, tmp_path):
    totals = []
    for tick in (0.5, 1.0):
        config = tiny_config(store, "schedule.kind=linear", "run.epochs=50", "run.budget_minutes=2.0",
                             "run.plan_budget=true")
        fit(config, tmp_path / f"run{tick}", progress=False, clock=FakeClock(tick))
        totals.append(TrainingState.load(tmp_path / f"run{tick}" / "checkpoints" / "latest.pt").plan["total_steps"])
    assert totals[1] < totals[0]


def test_a_resumed_budgeted_run_keeps_its_plan(store, tmp_path):
    config = tiny_config(store, "schedule.kind=linear", "run.epochs=50", "run.budget_minutes=2.0",
                         "run.plan_budget=true", "run.budget_steps=30")
    fit(config, tmp_path / "run", progress=False, clock=FakeClock(0.5))
    first = TrainingState.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert first.step == 30 and first.plan is not None
    resumed = tiny_config(store, "schedule.kind=linear", "run.epochs=50", "run.budget_minutes=2.0",
                          "run.plan_budget=true")
    summary = fit(resumed, tmp_path / "run", resume=True, progress=False, clock=FakeClock(5.0))  # much slower now
    last = TrainingState.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert last.plan == first.plan  # not planned again
    assert summary["step"] <= first.plan["total_steps"]
