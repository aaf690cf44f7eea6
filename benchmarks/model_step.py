"""Training-step and inference throughput: the paper's AlexNet vs torchvision's, alternated in one process.

``--models`` adds registered variants (e.g. ``alexnet_nolrn``, the bound for LRN work) to the rounds.

A training step is forward + cross-entropy + backward + SGD update (momentum 0.9, weight decay 5e-4) on a
batch of random 224x224 images. Both models run interleaved, round after round, so that whatever else the
machine does affects both alike; the printed ratio (ours / torchvision) is the number that matters.

    python benchmarks/model_step.py                    # CPU, fp32, batch 128, 2 threads
    python benchmarks/model_step.py --precision bf16 --device cuda --batch 256 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from contextlib import nullcontext

import torch
import torchvision

from alexnet.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, device, precision, train: bool, channels_last: bool):
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if train:
            with autocast:
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast:
                model(x)

    return step


def measure(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    models = {name: create_model(name) for name in args.models}
    models["torchvision"] = torchvision.models.alexnet()
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    results = {}
    for mode in ("train", "inference"):
        steps = {}
        for name, model in models.items():
            model.to(device).train(mode == "train")
            if args.channels_last:
                model.to(memory_format=torch.channels_last)
            steps[name] = make_step(model, device, args.precision, mode == "train", args.channels_last)
            for _ in range(args.warmup):
                steps[name](x, y)
        times = {name: [] for name in models}
        for _ in range(args.rounds):
            for name in models:
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    steps[name](x, y)
                _sync(device)
                times[name].append((time.perf_counter() - t0) / args.steps)
        rates = {name: args.batch / statistics.median(t) for name, t in times.items()}
        ratios = {name: rate / rates["torchvision"] for name, rate in rates.items() if name != "torchvision"}
        results[mode] = {"images_per_s": rates, "ratio": ratios[args.models[0]], "ratios": ratios}
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (the median is reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--models", nargs="+", default=["alexnet"],
                   help="registered models to time beside torchvision's (ratios are to torchvision's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = measure(args)
    setup = {k: getattr(args, k) for k in ("device", "precision", "batch", "threads", "channels_last")}
    if args.json:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"setup": setup, "torch": torch.__version__, **results, "peak_rss_mb": peak}, indent=2))
        return
    print(f"setup: {setup}, torch {torch.__version__}")
    for mode, r in results.items():
        rates = ", ".join(f"{name} {rate:.1f} img/s" for name, rate in r["images_per_s"].items())
        ratios = ", ".join(f"{name} {ratio:.2f}" for name, ratio in r["ratios"].items())
        print(f"{mode:9s}: {rates}; ratio to torchvision: {ratios}")


if __name__ == "__main__":
    main()
