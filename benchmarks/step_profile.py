"""Where a bf16 training step's time goes: ours vs torchvision's (torch.profiler, CPU, batch 128).

    .venv/bin/python benchmarks/step_profile.py

The eight most expensive operators of each network, per step (two steps profiled after three warm-up
steps: the second step of a fresh model still ran conv1 at 3.6x its steady time);
`results/cpu-2core/profile_bf16.txt` is one run.
"""

from __future__ import annotations

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

from alexnet.models import create_model


def main() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(128, 3, 224, 224), torch.randint(0, 1000, (128,))
    for name, model in (("alexnet", create_model("alexnet")), ("torchvision", torchvision.models.alexnet())):
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step(model=model, opt=opt) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
            step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 2 / 1e3
        print(f"== {name}: {total:.0f} ms of operator time per step")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
            ms = e.self_cpu_time_total / 2 / 1e3
            print(f"  {e.key:45s} {ms:8.0f} ms  {100 * ms / total:5.1f} %")


if __name__ == "__main__":
    main()
