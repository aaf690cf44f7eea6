"""Per-layer table of a model: output shape, parameters, multiply-accumulates and neurons."""

from __future__ import annotations

import torch
from torch import nn

from alexnet.models.lrn import LocalResponseNorm, LRNMaxPool
from alexnet.models.registry import create_model

_SHOWN = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d, LRNMaxPool, LocalResponseNorm)


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return out[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def summarize(name: str, input_size: int | None = None, num_classes: int = 1000) -> tuple[list[dict], dict]:
    """Run one image through ``name`` and describe every layer that changes shape or holds weights.

    Returns (rows, totals); each row has layer, kind, output shape (C, H, W) or (F,), params, macs, neurons
    (output elements of weight layers: the paper's "neurons"). MACs count one image, forward.
    ``input_size`` defaults to the model's own (224, or 32 for the CIFAR-10 nets).
    """
    if input_size is None:
        input_size = 32 if name.startswith("cifar") else 224
    model = create_model(name, num_classes=num_classes, input_size=input_size).eval()
    rows: list[dict] = []

    def hook(module: nn.Module, _inputs, out: torch.Tensor, layer: str) -> None:
        weights = isinstance(module, nn.Conv2d | nn.Linear)
        rows.append({
            "layer": layer,
            "kind": type(module).__name__,
            "output": list(out.shape[1:]),
            "params": sum(p.numel() for p in module.parameters()),
            "macs": _macs(module, out),
            "neurons": out[0].numel() if weights else 0,
        })

    handles = [
        module.register_forward_hook(lambda m, i, o, layer=layer: hook(m, i, o, layer))
        for layer, module in model.named_modules()
        if isinstance(module, _SHOWN)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    for h in handles:
        h.remove()
    totals = {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": sum(r["macs"] for r in rows),
        "neurons": sum(r["neurons"] for r in rows),
        "input": [3, input_size, input_size],
    }
    return rows, totals


def format_summary(name: str, rows: list[dict], totals: dict) -> str:
    """The rows of :func:`summarize` as an aligned text table."""
    header = f"{'layer':<16}{'kind':<18}{'output':>16}{'params':>14}{'MACs':>16}{'neurons':>12}"
    lines = [f"{name}, input {'x'.join(map(str, totals['input']))}", header, "-" * len(header)]
    for r in rows:
        out = "x".join(map(str, r["output"]))
        lines.append(f"{r['layer']:<16}{r['kind']:<18}{out:>16}{r['params']:>14,}{r['macs']:>16,}"
                     f"{r['neurons'] or '':>12}")
    lines.append("-" * len(header))
    lines.append(f"{'total':<50}{totals['params']:>14,}{totals['macs']:>16,}{totals['neurons']:>12,}")
    return "\n".join(lines)
