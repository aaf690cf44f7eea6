"""The paper's update rule (Section 5) and the learning-rate schedules."""

import pytest
import torch

from alexnet.config import ScheduleConfig
from alexnet.optim import LinearSchedule, PaperSGD, PlateauSchedule, StepSchedule, build_schedule, set_lr


def _step(opt, w, grad):
    w.grad = grad.clone()
    opt.step()


def test_one_step_equals_the_formula_by_hand_across_an_lr_change():
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.0005)
    g1, g2 = torch.tensor([0.3, -0.1, 2.0]), torch.tensor([-1.0, 0.5, 0.25])

    w0 = w.detach().clone()
    _step(opt, w, g1)
    v1 = 0.9 * 0 - 0.0005 * 0.1 * w0 - 0.1 * g1  # v <- m v - wd lr w - lr g
    w1 = w0 + v1  # w <- w + v
    assert torch.allclose(w.detach(), w1, atol=0, rtol=1e-6)

    set_lr(opt, 0.01)  # after a drop, the old velocity keeps the old rate's steps (unlike torch's SGD)
    _step(opt, w, g2)
    v2 = 0.9 * v1 - 0.0005 * 0.01 * w1 - 0.01 * g2
    assert torch.allclose(w.detach(), w1 + v2, atol=0, rtol=1e-6)
    assert torch.allclose(opt.state[w]["velocity"], v2, rtol=1e-6)


def test_differs_from_torch_sgd_exactly_where_the_paper_says():
    """Equal to torch.optim.SGD while lr is constant; different after a change of lr."""
    torch.manual_seed(0)
    grads = [torch.randn(5) for _ in range(4)]
    weights = {}
    for kind in ("paper", "sgd"):
        w = torch.ones(5, requires_grad=True)
        opt = (
            PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=5e-4)
            if kind == "paper"
            else torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=5e-4)
        )
        trace = []
        for i, g in enumerate(grads):
            if i == 2:
                set_lr(opt, 0.01)
            _step(opt, w, g)
            trace.append(w.detach().clone())
        weights[kind] = trace
    for i in range(2):
        assert torch.allclose(weights["paper"][i], weights["sgd"][i], atol=1e-6)
    assert not torch.allclose(weights["paper"][2], weights["sgd"][2], atol=1e-4)


def test_plateau_drops_at_the_right_epochs_and_never_more_than_three_times():
    s = PlateauSchedule(0.01, factor=0.1, patience=2, max_drops=3)
    # error per epoch: improves, then flat for 2 epochs (drop after epoch 3), improves, flat again ...
    curve = [0.9, 0.8, 0.8, 0.85, 0.7, 0.75, 0.72, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    lrs = []
    for epoch, err in enumerate(curve):
        s.epoch_end(epoch, err)
        lrs.append(s.lr(10_000))
    assert s.drops == [3, 6, 9]
    assert lrs[2] == pytest.approx(0.01) and lrs[3] == pytest.approx(0.001)
    assert lrs[6] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-5)
    assert lrs[-1] == pytest.approx(1e-5)  # a fourth plateau changes nothing


def test_plateau_state_round_trips():
    a = PlateauSchedule(0.01, patience=1)
    for e, err in enumerate([0.5, 0.6, 0.4]):
        a.epoch_end(e, err)
    b = PlateauSchedule(0.01, patience=1)
    b.load_state_dict(a.state_dict())
    for s in (a, b):
        s.epoch_end(3, 0.45)
    assert a.state_dict() == b.state_dict() and a.drops == [1, 3]


def test_step_schedule_and_warmup():
    s = StepSchedule(0.1, factor=0.1, milestones=[2, 4], warmup_steps=4)
    assert [s.lr(i) for i in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    for epoch in range(4):
        s.epoch_end(epoch, 0.5)
        assert s.lr(100) == pytest.approx(0.1 * 0.1 ** ((epoch + 1 >= 2) + (epoch + 1 >= 4)))


def test_linear_schedule_reaches_zero_at_the_last_step():
    s = build_schedule(
        ScheduleConfig(kind="linear", warmup_epochs=0.0), 0.02, steps_per_epoch=10, total_steps=40
    )
    assert isinstance(s, LinearSchedule)
    assert s.lr(0) == pytest.approx(0.02) and s.lr(20) == pytest.approx(0.01) and s.lr(40) == 0.0


def test_resume_keeps_the_new_configs_hyper_parameters_and_restores_only_the_state():
    """A checkpoint carries what training changed; the resumed run's config sets the hyper-parameters."""
    linear = LinearSchedule(0.01, 1000, warmup_steps=10)
    linear.load_state_dict(LinearSchedule(0.01, 100, warmup_steps=0).state_dict())
    assert (linear.total_steps, linear.warmup_steps) == (1000, 10)

    old = PlateauSchedule(0.01, factor=0.5, patience=1, max_drops=1)
    for e, err in enumerate([0.5, 0.6]):
        old.epoch_end(e, err)
    new = PlateauSchedule(0.01, factor=0.1, patience=3, max_drops=2)
    new.load_state_dict(old.state_dict())
    assert (new.factor, new.patience, new.max_drops) == (0.1, 3, 2)
    assert (new.scale, new.best, new.bad_epochs, new.drops) == (0.5, 0.5, 0, [1])

    step = StepSchedule(0.1, factor=0.1, milestones=[1, 2])
    step.epoch_end(0, 0.5)
    moved = StepSchedule(0.1, factor=0.1, milestones=[5])
    moved.load_state_dict(step.state_dict())
    assert moved.milestones == [5] and moved.epochs_done == 1 and moved.lr(100) == pytest.approx(0.1)

    with pytest.raises(KeyError, match="another schedule"):
        StepSchedule(0.1).load_state_dict(old.state_dict())
    with pytest.raises(KeyError, match="another schedule"):
        PlateauSchedule(0.1).load_state_dict(linear.state_dict())


def test_weight_decay_on_weights_only_and_a_bias_rate_multiplier():
    """cuda-convnet's `wc` decays weights, not biases (optim.decay_biases = false); a bias rate multiplier is
    cuda-convnet2's option (bias_lr_scale). With the defaults every parameter stays in one group, as
    checkpoints written before the choice hold them."""
    from alexnet.optim import PaperSGD, parameter_groups, set_lr

    model = torch.nn.Linear(3, 2)
    assert parameter_groups(model, 0.1) == list(model.parameters())
    groups = parameter_groups(model, 0.1, decay_biases=False, bias_lr_scale=2.0)
    assert [len(g["params"]) for g in groups] == [1, 1] and groups[1]["params"][0] is model.bias
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"], groups[1]["lr_scale"]) == (0.1, 0.0, 2.0)
    opt = PaperSGD(groups, lr=0.5, momentum=0.0, weight_decay=0.1)
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 1.0]
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    model.weight.grad, model.bias.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt.step()  # zero gradients: only weight decay moves anything
    torch.testing.assert_close(model.weight.detach(), w * (1 - 0.1 * 0.5))
    assert torch.equal(model.bias.detach(), b)


def test_fused_update_gives_the_weights_of_the_tensor_operations():
    """The C++ pass (float32 CPU parameters) and the tensor operations agree exactly, across a change of
    rate, on sizes that are not a multiple of any vector width and on a channels-last weight."""
    from alexnet.optim import fused_sgd_available

    assert fused_sgd_available(), "the fused SGD update must build in the test environment (gcc + ninja)"
    torch.manual_seed(0)
    shapes = [(96, 3, 11, 11), (1000, 37), (10,), (3,)]
    start = [torch.randn(s) for s in shapes]
    start[0] = start[0].contiguous(memory_format=torch.channels_last)
    grads = [[torch.randn(s) for s in shapes] for _ in range(4)]
    for gs in grads:  # autograd lays a gradient out as its parameter
        gs[0] = gs[0].contiguous(memory_format=torch.channels_last)
    final = {}
    for fused in (True, False):
        ws = [w.clone().requires_grad_() for w in start]
        opt = PaperSGD([{"params": ws[:2]}, {"params": ws[2:], "weight_decay": 0.0}], lr=0.05, momentum=0.9,
                       weight_decay=5e-4, fused=fused)
        for i, gs in enumerate(grads):
            if i == 2:
                set_lr(opt, 0.005)
            for w, g in zip(ws, gs, strict=True):
                w.grad = g.clone()
            opt.step()
        assert [opt._fusable(w) for w in ws] == [fused] * 4
        final[fused] = [w.detach() for w in ws] + [opt.state[w]["velocity"] for w in ws]
    for a, b in zip(final[True], final[False], strict=True):
        assert torch.equal(a, b)
    assert final[True][0].is_contiguous(memory_format=torch.channels_last)


def test_fused_update_takes_what_it_cannot_update_through_tensor_operations():
    """float64 and parameters without a gradient: the tensor operations (or nothing), same formula."""
    w64 = torch.ones(5, dtype=torch.float64, requires_grad=True)
    idle = torch.ones(3, requires_grad=True)
    opt = PaperSGD([w64, idle], lr=0.1, momentum=0.9, weight_decay=0.0)
    w64.grad = torch.full((5,), 2.0, dtype=torch.float64)
    opt.step()
    assert torch.equal(w64.detach(), torch.full((5,), 0.8, dtype=torch.float64))
    assert torch.equal(idle.detach(), torch.ones(3)) and idle not in opt.state
    assert not opt._fusable(w64)


def test_fused_kernel_names_a_bad_argument():
    from alexnet.optim import fused_sgd_available

    assert fused_sgd_available()
    w, g, v = torch.zeros(4), torch.zeros(4), torch.zeros(5)
    with pytest.raises(RuntimeError, match=r"velocities\[0\] has sizes \[5\]"):
        torch.ops.alexnet_sgd.paper_step([w], [g], [v], 0.1, 0.9, 0.0)
    with pytest.raises(RuntimeError, match=r"grads\[0\] must be a dense float32 CPU tensor"):
        torch.ops.alexnet_sgd.paper_step([w], [g.double()], [v[:4]], 0.1, 0.9, 0.0)


def test_fused_update_survives_a_copy_and_a_velocity_in_another_layout():
    """A deep copy keeps working (Optimizer's pickled state omits `fused`); a channels-last weight whose
    velocity comes back plain (a checkpoint from the other layout) is re-laid once and still fused."""
    import copy

    torch.manual_seed(0)
    w0 = torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    grads = [torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last) for _ in range(3)]
    out = {}
    for fused in (True, False):
        w = w0.clone().requires_grad_()
        opt = PaperSGD([w], lr=0.1, weight_decay=5e-4, fused=fused)
        w.grad = grads[0].clone()
        opt.step()
        opt.state[w]["velocity"] = opt.state[w]["velocity"].contiguous()  # the plain layout
        opt = copy.deepcopy(opt) if fused else opt
        w = opt.param_groups[0]["params"][0]
        for g in grads[1:]:
            w.grad = g.clone()
            opt.step()
        assert opt._fusable(w) == fused
        out[fused] = (w.detach(), opt.state[w]["velocity"])
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
    assert out[True][1].is_contiguous(memory_format=torch.channels_last)
