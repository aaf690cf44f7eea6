"""Where a training step's time goes: ours vs torchvision's (torch.profiler, CPU, batch 128).

    .venv/bin/python benchmarks/step_profile.py [--precision fp32|bf16] [--channels-last] [--top 22]

Run it under the allocator the `alexnet` command uses (mimalloc, see src/alexnet/allocator.py), e.g. with
LD_PRELOAD pointing at the cmeel-mimalloc wheel's libmimalloc.so, or the numbers carry glibc's page faults.
The most expensive operators of each network, grouped by input shapes, per step (two steps profiled after
four warm-up steps: the second step of a fresh model still ran conv1 at 3.6x its steady time);
`results/cpu-2core-zen5/profile_fp32.txt` is one run.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

from alexnet.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--channels-last", action="store_true", help="both nets and the batch channels-last")
    parser.add_argument("--top", type=int, default=22)
    args = parser.parse_args()
    torch.manual_seed(0)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    x, y = torch.randn(128, 3, 224, 224).to(memory_format=layout), torch.randint(0, 1000, (128,))
    for name, model in (("alexnet", create_model("alexnet")), ("torchvision", torchvision.models.alexnet())):
        model = model.to(memory_format=layout)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step(model=model, opt=opt) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(4):
            step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
            step()
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events) / 2 / 1e3
        where = "channels-last" if args.channels_last else "NCHW"
        print(f"== {name}, {args.precision}, {where}: {total:.0f} ms of operator time per step")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            ms = e.self_cpu_time_total / 2 / 1e3
            shapes = ", ".join(str(tuple(s)) for s in e.input_shapes if s)
            print(f"  {e.key:32s} {ms:7.0f} ms  {100 * ms / total:5.1f} %  x{e.count // 2}  {shapes}")


if __name__ == "__main__":
    main()
