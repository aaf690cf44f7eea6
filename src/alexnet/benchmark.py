"""`alexnet benchmark`: ours against torchvision's, alternated in one process, on this machine.

Every figure is a ratio measured in the same run (ours / the reference), so the machine's own speed
and load cancel out as far as they can:

- training steps (forward, loss, backward, SGD) in fp32 and bf16 of the paper net, the paper net
  without LRN and torchvision's AlexNet, round after round in turn, and of the paper net as `alexnet train`
  runs it (its layout, the paper's update rule);
- inference with the centre crop and the ten crops (our batched views vs torchvision's TenCrop);
- achieved GFLOP/s against a large matmul timed here (the machine's practical peak);
- our input pipeline (the store on disk, augmented batches) vs torchvision's reference pipeline on the
  same JPEGs with the same workers, and vs the model's training rate measured above;
- the real training loop (`fit`) on the store, the split held in memory and streamed from disk, vs the same
  network on one fixed batch timed just before and after, with the peak anonymous memory (RssAnon) of the
  process and its workers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
import torchvision
from torch import nn

from alexnet.config import AugmentConfig, Config, load_config
from alexnet.data.augment import Augmenter
from alexnet.data.loader import TrainBatches
from alexnet.data.store import Store
from alexnet.engine import TrainStep, autocast_context
from alexnet.info import channels_last_by_default, environment
from alexnet.models import create_model
from alexnet.models.build import build_model
from alexnet.models.summary import summarize
from alexnet.optim import build_optimizer, parameter_groups
from alexnet.paths import resolve_source
from alexnet.rundir import read_metrics
from alexnet.seeding import batch_generator
from alexnet.train import fit

NETS = ("alexnet", "alexnet_nolrn", "torchvision")
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _net(name: str) -> nn.Module:
    return torchvision.models.alexnet() if name == "torchvision" else create_model(name)


def _train_flops(name: str) -> float:
    """Training FLOPs per image: 2 per multiply-accumulate, forward plus a backward of twice its cost."""
    return 6.0 * summarize("alexnet_owt" if name == "torchvision" else name)[1]["macs"]


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matmul, the best of `repeats`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rounds(steps: dict[str, Callable[[], object]], rounds: int, per_round: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function in every round, the functions timed in turn round after round."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            times[name].append(_seconds(lambda fn=fn: [fn() for _ in range(per_round)]) / per_round)
    return times


def _alternate(steps: dict[str, Callable[[], object]], rounds: int, per_round: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in turn round after round."""
    return {name: statistics.median(t) for name, t in _rounds(steps, rounds, per_round, warmup).items()}


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """How many times faster ours ran: the median over rounds of theirs / ours seconds in the same round.

    A shared machine's speed drifts by several per cent within a minute (a virtual machine's stolen time);
    two steps timed seconds apart see the same machine, so the ratio of each round moves less than the rates.
    """
    return statistics.median(t / o for o, t in zip(ours, theirs, strict=True))


def _train_step(name: str, memory_format: torch.memory_format, optimizer: str, x: torch.Tensor, y: torch.Tensor,
                precision: str) -> Callable[[], None]:
    """One training step of a fresh net: forward under the precision, cross-entropy, backward, the update
    (`optimizer`: "sgd", torch.optim.SGD; "paper", the paper's rule as `alexnet train` runs it)."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    torch.manual_seed(0)
    model = _net(name).train().to(memory_format=memory_format)
    opt = build_optimizer(model.parameters(), optimizer, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    inputs = x.contiguous(memory_format=memory_format)

    def step() -> None:
        with autocast:
            loss = nn.functional.cross_entropy(model(inputs).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def training_steps(batch: int, rounds: int) -> dict:
    """Images/s of a training step of each net in both memory layouts, fp32 and bf16, and the achieved GFLOP/s.

    Every net is timed with torch.optim.SGD (the nets alone), and ours once more as `alexnet train` trains it:
    in the layout a run chooses on this machine (`alexnet.info.channels_last_by_default`) with the paper's
    update rule (`alexnet.optim.PaperSGD`). The headline ratio is that against torchvision's AlexNet in its
    faster layout with torch.optim.SGD, as its users train it; ``ratio_to_torchvision_same_optimizer`` keeps
    the nets-only comparison. Each round times one step of every configuration in turn; ratios are paired
    within rounds (`paired_ratio`).
    """
    out = {}
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    for precision in ("fp32", "bf16"):
        ours = "channels_last" if channels_last_by_default(torch.device("cpu"), precision) else "nchw"
        steps = {f"{name}/{layout}": _train_step(name, memory_format, "sgd", x, y, precision)
                 for name in NETS for layout, memory_format in LAYOUTS.items()}
        steps["alexnet/paper-sgd"] = _train_step("alexnet", LAYOUTS[ours], "paper", x, y, precision)
        times = _rounds(steps, rounds, per_round=1, warmup=1)
        seconds = {name: statistics.median(t) for name, t in times.items()}
        rates = {name: {layout: batch / seconds[f"{name}/{layout}"] for layout in LAYOUTS} for name in NETS}
        as_trained = batch / seconds["alexnet/paper-sgd"]
        theirs = max(LAYOUTS, key=lambda layout: rates["torchvision"][layout])
        tv = times[f"torchvision/{theirs}"]
        out[precision] = {
            "images_per_s": rates,
            "images_per_s_as_trained": as_trained,
            "layout": {"ours": ours, "torchvision": theirs},
            "optimizer": {"ours": "PaperSGD (alexnet.optim, fused where built)", "torchvision": "torch.optim.SGD"},
            "model_images_per_s": as_trained,
            "rounds": rounds,
            # paired per round (paired_ratio); the ratio of the median rates is kept beside it
            "ratio_to_torchvision": {"alexnet": paired_ratio(times["alexnet/paper-sgd"], tv)},
            "ratio_of_median_rates": {"alexnet": as_trained / rates["torchvision"][theirs]},
            "ratio_to_torchvision_same_optimizer": {n: paired_ratio(times[f"{n}/{ours}"], tv) for n in NETS[:2]},
            "ratio_to_torchvision_same_layout": {
                layout: rates["alexnet"][layout] / rates["torchvision"][layout] for layout in LAYOUTS},
            "ratio_to_no_lrn": rates["alexnet"][ours] / rates["alexnet_nolrn"][ours],
            "gflop_per_s": {n: rates[n][ours if n != "torchvision" else theirs] * _train_flops(n) / 1e9
                            for n in NETS},
        }
    return out


def format_training(precision: str, r: dict) -> str:
    rates = ", ".join(f"{n} {v['nchw']:.1f} / {v['channels_last']:.1f}" for n, v in r["images_per_s"].items())
    return (f"train {precision} (img/s, NCHW / channels-last, torch.optim.SGD): {rates}; paper as trained "
            f"({r['layout']['ours']}, PaperSGD) {r['images_per_s_as_trained']:.1f}; paper / torchvision "
            f"({r['layout']['torchvision']}) {r['ratio_to_torchvision']['alexnet']:.2f} as trained, "
            f"{r['ratio_to_torchvision_same_optimizer']['alexnet']:.2f} with the same optimizer; "
            f"paper/no-LRN {r['ratio_to_no_lrn']:.2f}")


def inference(batch: int, rounds: int, size: int = 256) -> dict:
    """Images/s of centre-crop and ten-crop inference (bf16), ours vs torchvision's transforms and net."""
    from torchvision.transforms import v2

    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    ours_aug = Augmenter(AugmentConfig(normalize="channel", lighting_std=0.0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    nets = {"ours": create_model("alexnet").eval(), "torchvision": torchvision.models.alexnet().eval()}

    def run(net: nn.Module, crops: list[torch.Tensor]) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for c in crops:
                net(c).float().softmax(1)

    def theirs_views(ten: bool) -> list[torch.Tensor]:
        x = images.float() / 255
        views = v2.functional.ten_crop(x, [224, 224]) if ten else (v2.functional.center_crop(x, [224, 224]),)
        return [(v - mean) / std for v in views]

    out = {}
    for ten in (False, True):
        ours = (lambda: run(nets["ours"], list(ours_aug.ten_crop(images).unbind(1)))) if ten else (
            lambda: run(nets["ours"], [ours_aug.center(images)]))
        steps = {"ours": ours, "torchvision": lambda ten=ten: run(nets["torchvision"], theirs_views(ten))}
        seconds = _alternate(steps, rounds, per_round=1, warmup=1)
        rates = {k: batch / s for k, s in seconds.items()}
        out["ten_crop" if ten else "centre"] = {"images_per_s": rates, "ratio": rates["ours"] / rates["torchvision"]}
    return out


def reference_pipeline(root: Path, batch: int, workers: int) -> Iterator[torch.Tensor]:
    """torchvision's reference ImageNet training transform on the original JPEGs."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.Resize(256), transforms.RandomCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(root), transform=tf), batch_size=batch,
                                         shuffle=True, num_workers=workers, drop_last=True)
    while True:
        yield from (images for images, _ in loader)


def our_pipeline(store: Store, batch: int, workers: int, in_memory: bool = False,
                 device: str = "cpu") -> Iterator[torch.Tensor]:
    """Augmented float32 training batches, epoch after epoch, the paper's recipe (Section 4.1)."""
    batches = TrainBatches.from_store(store, batch_size=batch, seed=0, in_memory=in_memory, workers=workers,
                                      device=device)
    aug = Augmenter(AugmentConfig(), store.mean, store.eigvals, store.eigvecs, device=device)
    for epoch in itertools.count():
        for k, images, _ in batches.epoch(epoch):
            yield aug.train(images, batch_generator(0, epoch, k, device))


def rate(batches: Iterator[torch.Tensor], count: int, warmup: int = 5) -> float:
    """Images per second over `count` batches after `warmup` (thread pools and worker processes starting,
    first touches of fresh buffers): the steady rate that a long training run sees."""
    for _ in range(warmup):
        next(batches)
    t0, images = time.perf_counter(), 0
    for _ in range(count):
        images += next(batches).shape[0]
    return images / (time.perf_counter() - t0)


def extract_train(archive: Path, dest: Path) -> Path:
    if not (dest / ".extracted").exists():
        with tarfile.open(archive) as tar:
            tar.extractall(dest, members=[m for m in tar.getmembers() if "/train/" in m.name], filter="data")
        (dest / ".extracted").touch()
    return next(dest.glob("*/train"))


def reference_rate_under_glibc(root: Path, batch: int, workers: int, batches: int) -> float:
    """torchvision's reference pipeline as a user runs it: a fresh process on the system allocator."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("MIMALLOC_")}
    env["ALEXNET_ALLOCATOR"] = "system"
    code = ("from pathlib import Path; from alexnet.benchmark import rate, reference_pipeline; "
            f"print(rate(reference_pipeline(Path({str(root)!r}), {batch}, {workers}), {batches}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _read_once(paths: list[Path], chunk: int = 1 << 24) -> None:
    """Read files through once, so that both pipelines start from the page cache: the reference reads JPEGs
    it has just extracted, and a store read back from disk (evicted by other files) measured half its rate."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(chunk):
                pass


def input_pipeline(store: Store, archive: Path, work: Path, batch: int, workers: int, batches: int) -> dict:
    """Ours (this process) vs torchvision's reference under glibc, as a user would run it, and under this
    process's allocator."""
    root = extract_train(archive, work / "jpeg")
    _read_once(store.images(store.train_split).paths)  # in the page cache, as the JPEGs just extracted are
    ours = rate(our_pipeline(store, batch, workers), batches)
    theirs = reference_rate_under_glibc(root, batch, workers, batches)
    theirs_here = rate(reference_pipeline(root, batch, workers), batches)
    return {"ours_memmap_images_per_s": ours, "torchvision_images_per_s": theirs, "ratio": ours / theirs,
            "torchvision_same_allocator_images_per_s": theirs_here, "ratio_same_allocator": ours / theirs_here}


class AnonPeak:
    """The peak of RssAnon summed over this process and its descendants, sampled every 0.2 s."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree(pid: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(stat.parent.name))
        out, todo = [pid], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    @staticmethod
    def _anon_kb(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_kb = max(self.peak_kb, sum(self._anon_kb(p) for p in self._tree(os.getpid())))

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def overall_rate(metrics: Path) -> float:
    """Training images per second over every epoch record of a run (the steps span several epochs, and the
    last one may be partial): each record's images from its share of an epoch, its seconds from its rate."""
    records = [r for r in read_metrics(metrics)[0] if r.get("images_per_s")]
    epochs = [0.0] + [r["epoch"] for r in records]
    shares = [b - a for a, b in zip(epochs, epochs[1:], strict=False)]
    return sum(shares) / sum(share / r["images_per_s"] for share, r in zip(shares, records, strict=True))


def same_net_rate(config: Config, num_classes: int, batch: int, steps: int = 12, warmup: int = 4) -> float:
    """Images/s of `config`'s network trained on one fixed batch, without data (what the end-to-end rate is
    compared with): its classes, optimizer kind and parameter groups, layout and precision as `fit` has them;
    a rate of lr/100 (a step costs the same at any rate; the fixed batch must not blow up), the process's
    threads, no compile or label smoothing (the demo uses neither)."""
    config = config.with_num_classes(num_classes, "the benchmark's store")
    layout = config.run.channels_last
    if layout is None:
        layout = channels_last_by_default(torch.device("cpu"), config.run.precision)
    memory_format = torch.channels_last if layout else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(config.model).train().to(memory_format=memory_format)
    optim = config.optim
    opt = build_optimizer(parameter_groups(model, optim.weight_decay, optim.decay_biases, optim.bias_lr_scale),
                          optim.kind, optim.lr / 100, optim.momentum, optim.weight_decay)
    x = torch.randn(batch, 3, config.data.crop, config.data.crop).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch,))
    step = TrainStep(model, opt, lambda _: optim.lr / 100, autocast_context(torch.device("cpu"), config.run.precision),
                     bool(layout))
    for i in range(warmup):
        step(i, x, y)
    start = time.perf_counter()
    for i in range(steps):
        step(i, x, y)
    return batch * steps / (time.perf_counter() - start)


def epoch_rates(metrics: Path) -> list[float]:
    """Training images/s of each whole epoch of a run, in order (partial epochs left out)."""
    return [r["images_per_s"] for r in read_metrics(metrics)[0] if r.get("images_per_s") and not r.get("partial")]


def end_to_end(store_path: Path, work: Path, epochs: int, precision: str, model_rate: float,
               in_memory: bool) -> dict:
    """`fit` on the store for `epochs` whole epochs (the split held in memory, as the demo's preset trains, or
    streamed from disk, as the paper's) against the demo's own network on one fixed batch, timed just before
    and just after (its classes, optimizer, layout; the mean of the two is the rate the ratio divides by).

    The ratio that counts is the last epoch's: a whole epoch in steady state, its batching, crops, shuffle
    and progress included; the first epoch also carries a fresh model's first steps, a one-off cost of a run
    that the model-only rate leaves out too (both are reported).
    """
    config = load_config("demo", [f"data.store={store_path}", f"data.in_memory={str(in_memory).lower()}",
                                  f"run.precision={precision}", "run.plan_budget=false", "run.budget_minutes=0",
                                  f"run.epochs={epochs}", "run.eval_every_epochs=0",
                                  "run.checkpoint_every_minutes=0", "run.checkpoint_every_epochs=0"])
    classes = Store.open(store_path).num_classes
    before = same_net_rate(config, classes, config.data.batch_size)
    with AnonPeak() as peak, contextlib.redirect_stdout(sys.stderr):  # fit's epoch line is not the result
        summary = fit(config, work / f"e2e-{'memory' if in_memory else 'disk'}", progress=False)
    after = same_net_rate(config, classes, config.data.batch_size)
    same_net = 2 / (1 / before + 1 / after)  # the mean step time of the two
    metrics = Path(summary["metrics"])
    rates = epoch_rates(metrics)
    overall = overall_rate(metrics)
    return {"epochs": epochs, "precision": precision, "in_memory": in_memory, "images_per_s": rates[-1],
            "epoch_images_per_s": rates, "overall_images_per_s": overall, "model_only_images_per_s": model_rate,
            "same_net_images_per_s": same_net, "same_net_before_after": [before, after],
            "ratio": rates[-1] / same_net, "ratio_overall": overall / same_net,
            "ratio_to_benchmark_model_rate": rates[-1] / model_rate, "peak_rss_anon_gib": peak.peak_kb / 2**20}


def format_end_to_end(e2e: dict) -> str:
    where = "in memory" if e2e["in_memory"] else "streamed from disk"
    return (f"end to end ({e2e['precision']}, {where}): last of {e2e['epochs']} epochs {e2e['images_per_s']:.1f} "
            f"img/s = {e2e['ratio']:.2f}x the same network on one fixed batch ({e2e['same_net_images_per_s']:.1f} "
            f"img/s, before/after {e2e['same_net_before_after'][0]:.1f}/{e2e['same_net_before_after'][1]:.1f}); "
            f"every epoch {e2e['ratio_overall']:.2f}x; {e2e['ratio_to_benchmark_model_rate']:.2f}x the 1000-class "
            f"model-only rate; peak RssAnon {e2e['peak_rss_anon_gib']:.2f} GiB")


def run_benchmark(store: str | os.PathLike, rounds: int = 10, batch: int = 128, e2e_epochs: int = 2,
                  pipeline_batches: int = 40, workers: int = 2, log: Callable[[str], None] = print) -> dict:
    """Every measurement above; `store` is a prepared Imagenette store (256 px)."""
    store_path = Path(store)
    st = Store.open(store_path)
    archive = resolve_source("imagenette2-224")
    result: dict = {"environment": environment("cpu")}
    started = time.perf_counter()
    result["matmul_gflop_per_s"] = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    log(f"matmul peak: {result['matmul_gflop_per_s']['fp32']:.0f} GFLOP/s fp32, "
        f"{result['matmul_gflop_per_s']['bf16']:.0f} bf16")
    result["train"] = training_steps(batch, rounds)
    for precision, r in result["train"].items():
        log(format_training(precision, r))
    result["inference"] = inference(batch, rounds)
    for view, r in result["inference"].items():
        log(f"inference {view} (bf16): ours {r['images_per_s']['ours']:.1f}, torchvision "
            f"{r['images_per_s']['torchvision']:.1f} img/s, ratio {r['ratio']:.2f}")
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-") as tmp:
        pipe = input_pipeline(st, archive, Path(tmp), batch, workers, pipeline_batches)
        model_rate = result["train"]["bf16"]["model_images_per_s"]
        pipe["ratio_to_model_bf16"] = pipe["ours_memmap_images_per_s"] / model_rate
        result["input_pipeline"] = pipe
        log(f"input pipeline: ours {pipe['ours_memmap_images_per_s']:.0f}, torchvision (glibc) "
            f"{pipe['torchvision_images_per_s']:.0f} img/s, ratio {pipe['ratio']:.1f} (same allocator: "
            f"{pipe['ratio_same_allocator']:.1f}); {pipe['ratio_to_model_bf16']:.0f}x the bf16 training rate")
        for key, in_memory in (("end_to_end", True), ("end_to_end_streamed", False)):
            result[key] = end_to_end(store_path, Path(tmp), e2e_epochs, "bf16", model_rate, in_memory)
            log(format_end_to_end(result[key]))
    result["wall_s"] = time.perf_counter() - started
    return result
