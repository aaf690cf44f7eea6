"""Dropout as the paper describes it (Section 4.2), and the inverted form PyTorch ships.

The paper: "setting to zero the output of each hidden neuron with probability 0.5 ... At test time, we use
all the neurons but multiply their outputs by 0.5". Kept units are not rescaled in training; cuda-convnet2
calls this layer ``dropout2`` and its ImageNet layer files use it. PyTorch's ``nn.Dropout`` is the inverted
form (kept units times 1 / (1 - p) in training, the identity at test), cuda-convnet2's ``dropout``.

The two compute the same function at test time but do not train the same: with the same weights,
W (2 m h) = (2 W) (m h), so the inverted form is the paper's network with the layer after each dropout
started at twice the standard deviation and trained at four times the rate. With the paper's
initialisation and learning rate that is enough to kill fc7 within a few steps (docs/network.md, "Dropout").
"""

from __future__ import annotations

import torch
from torch import nn

DROPOUT_FORMS = ("paper", "inverted")


class PaperDropout(nn.Module):
    """Training: each unit kept with probability 1 - p, unscaled. Evaluation: every unit times 1 - p."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p = {p!r}: expected a probability in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        if not self.training:
            return x * (1.0 - self.p)
        # A float32 uniform draw against p (not bernoulli_, 3x slower on the CPU: 6.6 vs 2.0 ms for a batch of
        # 128 x 4096), in float32 whatever x is, so that p is not rounded to bf16's 8 bits.
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}, kept units unscaled in training, x{1 - self.p:g} in evaluation"


def dropout_layer(p: float, form: str) -> nn.Module:
    """Dropout with probability `p` in the given form: "paper" (:class:`PaperDropout`) or "inverted"
    (``nn.Dropout``)."""
    if form == "paper":
        return PaperDropout(p)
    if form == "inverted":
        return nn.Dropout(p)
    raise ValueError(f"dropout form {form!r}: expected one of {', '.join(DROPOUT_FORMS)}")
