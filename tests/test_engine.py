"""The training loop's reads from the device: not every step, and a non-finite loss is still caught."""

import pytest
import torch

from alexnet.engine import SYNC_EVERY, EpochData, EpochStats, TrainStep, train_one_epoch
from alexnet.errors import NonFiniteLossError

STEPS = 3 * SYNC_EVERY + 5


def _loop(lr: float = 0.01, poison_at: int | None = None):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    images = torch.randn(STEPS, 4, 8)
    labels = torch.randint(0, 3, (STEPS, 4))

    def augment(x: torch.Tensor, batch: int) -> torch.Tensor:
        return x * float("nan") if batch == poison_at else x

    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=lr), lambda s: lr)
    data = EpochData(0, ((i, images[i], labels[i]) for i in range(STEPS)), augment, STEPS)
    return step, data


def test_the_loop_reads_from_the_device_only_every_sync_interval(monkeypatch):
    """Every way a tensor's value reaches Python (item, tolist, int, float, bool) is counted: one read per
    SYNC_EVERY steps and one at the end, not one or three per step as before."""
    reads = []
    for name in ("item", "tolist", "__int__", "__float__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name):
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train_step, data = _loop()
    stats = EpochStats()
    step, stopped = train_one_epoch(train_step, data, stats, 0, progress=False)
    monkeypatch.undo()
    assert (step, stopped, stats.steps, stats.images) == (STEPS, False, STEPS, 4 * STEPS)
    assert len(reads) == STEPS // SYNC_EVERY + 1, reads
    # the sums are those of every step
    assert 0 < stats.loss_sum / stats.images < 10 and 0 <= stats.errors <= stats.images


def test_a_nan_loss_is_raised_at_the_next_read_naming_its_step():
    train_step, data = _loop(poison_at=SYNC_EVERY + 3)
    stats = EpochStats()
    with pytest.raises(NonFiniteLossError, match=rf"at step {SYNC_EVERY + 3} \(epoch 1, batch {SYNC_EVERY + 3}\)"):
        train_one_epoch(train_step, data, stats, 0, progress=False)
    assert stats.steps == 2 * SYNC_EVERY  # it ran on until the next read, and no further


def test_reading_the_stats_for_a_checkpoint_checks_the_loss_first():
    """A checkpoint's save reads EpochStats.state_dict() (train._save); that read raises for the NaN of an
    earlier step, so a checkpoint due at step 3 is never written after step 2's NaN."""
    train_step, data = _loop(poison_at=2)
    stats = EpochStats()
    saved = []

    def save_at_three(step: int, next_batch: int) -> bool:
        if step == 3:
            saved.append(stats.state_dict())
        return False

    with pytest.raises(NonFiniteLossError, match="at step 2 "):
        train_one_epoch(train_step, data, stats, 0, should_stop=save_at_three, progress=False)
    assert saved == [] and stats.steps == 3
