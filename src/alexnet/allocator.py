"""The memory allocator the `alexnet` command runs under, chosen before Python imports torch.

glibc's malloc gives large blocks back to the kernel and faults fresh pages in for each new large
tensor, which costs a CPU training step a quarter of its speed and makes timings jumpy
(docs/performance.md). mimalloc, shipped as a pip wheel (`cmeel-mimalloc`, a dependency of this
package), keeps them. An allocator can only be swapped at process start, so the console entry point
re-executes itself once with mimalloc in ``LD_PRELOAD``; children (data-loader workers, prepare's
decoding processes, torchrun's workers) inherit it.

``ALEXNET_ALLOCATOR`` chooses: ``auto`` (default: mimalloc unless ``LD_PRELOAD`` already names an
allocator such as jemalloc or tcmalloc), ``mimalloc`` (an error if it cannot be found), or ``system``
(leave the process as it is). Only Linux is affected; elsewhere the system allocator stays.

This module must not import torch.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

ENV = "ALEXNET_ALLOCATOR"
_MARK = "_ALEXNET_ALLOCATOR_EXEC"  # set in the re-executed process, so it never loops
CHOICES = ("auto", "mimalloc", "system")
KNOWN = ("mimalloc", "jemalloc", "tcmalloc")

# mimalloc's settings for this workload (measured with benchmarks/allocators.py): keep freed memory for
# 10 s instead of returning it at once, and commit arenas eagerly. A user's own MIMALLOC_* values win.
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "10000", "MIMALLOC_ARENA_EAGER_COMMIT": "1"}


def mimalloc_library() -> Path | None:
    """The mimalloc shared library of the `cmeel-mimalloc` wheel in this environment, if installed."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}
    for root in roots:
        lib = Path(root) / "cmeel.prefix" / "lib"
        for name in ("libmimalloc.so", "libmimalloc.so.3"):
            if (lib / name).is_file():
                return lib / name
    return None


def preloaded(environ: dict | None = None) -> str | None:
    """The allocator named in LD_PRELOAD (mimalloc, jemalloc, tcmalloc), or None."""
    value = (environ if environ is not None else os.environ).get("LD_PRELOAD", "")
    return next((name for name in KNOWN if name in value), None)


def in_use() -> str:
    """The allocator this process runs on, from the libraries mapped into it (Linux), else "system"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return next((name for name in KNOWN if f"lib{name}" in maps), "glibc" if sys.platform == "linux" else "system")


def plan(environ: dict, platform: str = sys.platform) -> dict | None:
    """The environment to re-execute with, or None to run as we are (a pure function, for tests)."""
    choice = environ.get(ENV, "auto")
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "system" or environ.get(_MARK) or platform != "linux":
        return None
    if choice == "auto" and preloaded(environ):
        return None
    lib = mimalloc_library()
    if lib is None:
        if choice == "mimalloc":
            raise ValueError(f"{ENV}=mimalloc but the cmeel-mimalloc wheel is missing: pip install cmeel-mimalloc")
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join(p for p in (str(lib), environ.get("LD_PRELOAD", "")) if p)
    for key, value in MIMALLOC_SETTINGS.items():
        env.setdefault(key, value)
    env[_MARK] = "1"
    return env


def reexec_with_allocator(argv: list[str]) -> None:
    """Replace this process by ``python -m alexnet ARGV`` under the planned allocator, if one is planned.
    Call it first thing in the console entry point, before torch is imported."""
    try:
        env = plan(dict(os.environ))
    except ValueError as e:
        print(f"alexnet: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "alexnet", *argv], env)
