"""The C++ operators' build: compiled for the CPU they run on, with torch's threads."""

import torch

from alexnet.models.lrn import PAPER_LRN, cpp_kernel_available, lrn_max_pool
from alexnet.optim import fused_sgd_available


def test_parallel_loops_use_torchs_threads():
    """Built without OpenMP, at::parallel_for runs every loop on one thread whatever torch's setting (the LRN
    kernel did so, at half its speed on two cores, until the build flags said -fopenmp)."""
    assert fused_sgd_available()
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.ops.alexnet_sgd.parallel_threads(8) == threads
    finally:
        torch.set_num_threads(before)


def test_lrn_kernel_gives_the_same_numbers_on_one_and_two_threads():
    assert cpp_kernel_available()
    torch.manual_seed(0)
    before = torch.get_num_threads()
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(6, 48, 13, 13).contiguous(memory_format=layout)
        g = torch.randn(6, 48, 6, 6)
        out = {}
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                t = x.clone().requires_grad_()
                y = lrn_max_pool(t, PAPER_LRN.size, PAPER_LRN.multiplier, PAPER_LRN.beta, PAPER_LRN.k, relu=True,
                                 groups=2, backend="cpp")
                y.backward(g)
                out[threads] = (y.detach(), t.grad)
        finally:
            torch.set_num_threads(before)
        assert torch.equal(out[1][0], out[2][0]) and torch.equal(out[1][1], out[2][1])


def test_a_fused_pass_that_cannot_be_built_says_why_and_training_goes_on(monkeypatch, caplog):
    from alexnet import native, optim

    def no_compiler(*args, **kwargs):
        raise OSError("no C++ compiler")

    monkeypatch.setattr(native, "build", no_compiler)
    with caplog.at_level("WARNING", logger="alexnet.native"):
        why = native.fused_pass("alexnet_x", native.CSRC / "sgd.cpp", "the fused thing", "the slow thing")
    assert why == "OSError: no C++ compiler"
    assert "the fused thing could not be built (OSError: no C++ compiler); using the slow thing" in caplog.text
    monkeypatch.setattr(optim, "fused_sgd_available", lambda: False)
    w = torch.ones(4, requires_grad=True)
    opt = optim.PaperSGD([w], lr=0.5, momentum=0.9, weight_decay=0.0)
    w.grad = torch.ones(4)
    opt.step()
    assert not opt._fusable(w) and torch.equal(w.detach(), torch.full((4,), 0.5))
