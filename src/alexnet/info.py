"""What is running: versions, machine, device, threads, allocator and LRN path (`alexnet info`).

The same facts go into every run folder (``environment.json``) and every benchmark's JSON, so a number
can always be traced to the machine and the code paths that produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import torch
import torchvision

from alexnet import __version__
from alexnet.allocator import in_use
from alexnet.distributed import resolve_device
from alexnet.models.lrn import cuda_lrn_path, lrn_path


def cpu_model() -> str:
    """`lscpu`'s model name (or /proc/cpuinfo's, or the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


# The CPU features that decide how fast training runs here: bf16 dot products (AVX-512 BF16) and the AMX
# matrix units, which oneDNN uses for bf16 convolutions, fastest on channels-last maps.
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vp2intersect")


def cpu_flags() -> list[str]:
    """Which of FLAGS_THAT_MATTER this CPU has (from /proc/cpuinfo; none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in FLAGS_THAT_MATTER if flag in have]
    except OSError:
        pass
    return []


def channels_last_by_default(device: torch.device, precision: str) -> bool:
    """What `run.channels_last` left unset means: channels-last maps on a CPU with AVX-512, where they were
    measured faster in both precisions (with AMX, an Intel Xeon: oneDNN's AMX bf16 convolutions and its AVX-512
    fp32 ones; without, an AMD EPYC Zen 4: its AVX-512 convolutions in both; on both, the hand-vectorised
    channels-last LRN kernel; docs/performance.md); the plain layout everywhere else, where no measurement has
    shown a gain."""
    return device.type == "cpu" and precision in ("bf16", "fp32") and "avx512f" in cpu_flags()


def gpu_name(dev: torch.device) -> str | None:
    """The GPU's name where `dev` is a CUDA device, else None."""
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else None


def environment(device: str = "auto") -> dict:
    """The facts, as a JSON-ready dict."""
    dev = resolve_device(device)
    path, why = lrn_path(build=dev.type == "cpu")
    return {
        "alexnet": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "gpu": gpu_name(dev),
        "allocator": in_use(),
        "lrn_cpu": path,
        "lrn_cpu_reason": why,
        "lrn_cuda": cuda_lrn_path()[0],
        "lrn_cuda_reason": cuda_lrn_path()[1],
        "executable": sys.executable,
    }


def format_environment(env: dict) -> str:
    width = max(map(len, env))
    return "\n".join(f"{key:<{width}}  {value}" for key, value in env.items() if value is not None)
