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
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
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
