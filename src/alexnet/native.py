"""Building the package's C++ operators (``csrc/``): compiled on first use for the CPU they run on, with
torch's extension builder, and cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``).

Each source registers its operators with ``TORCH_LIBRARY``; :func:`build` compiles and loads one. The flags:

* ``-march=native``: the vector instructions of this CPU (AVX-512 where it has them). The build is cached
  per machine: the CPU's model line and flags are part of the cache key.
* ``-fopenmp``: ``at::parallel_for`` spreads its loop over torch's intra-op threads only in code compiled
  with OpenMP; without it every call runs on one thread (so did the LRN kernel until the flag came in, at half its
  speed on two cores). The library then uses the OpenMP runtime torch already loaded (the same soname).
"""

from __future__ import annotations

import hashlib
import logging
import platform
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno")
LDFLAGS = ("-fopenmp",)

log = logging.getLogger(__name__)


def build(stem: str, source: Path, extra_cflags: tuple[str, ...] = ()) -> None:
    """Compile (once per machine, source and flags) and load the operators in `source`; raises what the
    builder raised (no compiler, no ninja, a compile error). `extra_cflags` add to CFLAGS for this source."""
    # The builder logs a CUDA warning on CPU-only machines that says nothing about these kernels.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension  # heavy (setuptools, ninja lookups): only when something is built

    # A changed source, CPU or flag builds into a new folder, never over a library a running process loaded.
    key = hashlib.sha256(source.read_bytes() + platform.processor().encode() + cpu_model().encode()
                         + " ".join(CFLAGS + extra_cflags + LDFLAGS).encode())
    cpp_extension.load(
        name=f"{stem}_{key.hexdigest()[:12]}",
        sources=[str(source)],
        extra_cflags=list(CFLAGS + extra_cflags),
        extra_ldflags=list(LDFLAGS),
        is_python_module=False,
        verbose=False,
    )


def build_failure(err: BaseException) -> str:
    """What a failed build says in one line: the exception's type and the first line of its message."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def fused_pass(stem: str, source: Path, what: str, fallback: str) -> str | None:
    """Build and load a fused pass that reproduces the rounding of torch's tensor operations (csrc/sgd.cpp,
    csrc/augment.cpp; compiled without contracting anything but the fused multiply-adds it writes itself).
    None once it is loaded; otherwise why not, logged once as a warning naming `what` and the `fallback`."""
    if not vector_fma():
        return "torch's CPU kernels here round a multiply-add twice"
    try:
        build(stem, source, ("-ffp-contract=off",))
    except Exception as err:  # a missing compiler must not stop training
        why = build_failure(err)
        log.warning("%s could not be built (%s); using %s", what, why, fallback)
        return why
    return None


def vector_fma() -> bool:
    """Whether torch's vectorised CPU kernels fuse a multiply and an add into one rounding, as the fused update
    and crop do to give the same numbers as the tensor operations they replace: everywhere but an x86 torch
    limited to its baseline kernels (ATEN_CPU_CAPABILITY=default, or a CPU without AVX2), where the tensor
    operations then run instead."""
    import torch

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return not (x86 and torch.backends.cpu.get_cpu_capability() == "DEFAULT")


def cpu_model() -> str:
    """/proc/cpuinfo's model name and flags lines ("" where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(next((line for line in lines if line.startswith(k)), "") for k in ("model name", "flags"))
