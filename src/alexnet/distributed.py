"""torchrun and DistributedDataParallel: one code path for one process, many CPUs (gloo) or GPUs (NCCL).

A process started by torchrun finds RANK, WORLD_SIZE and LOCAL_RANK in its environment; without them
it is a world of one and every collective here is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alexnet.errors import DeviceError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this package created the process group (and so tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """ "auto": this process's GPU when CUDA is present, else the CPU; otherwise the named device, which
    must exist here (a DeviceError names it and what to use instead)."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(
            f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N (run.device)"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"device {device!r}: this machine has no CUDA GPU that torch can use "
                f"(torch {torch.__version__}); use --set run.device=cpu (or auto)"
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= count:
            raise DeviceError(f"device {dev}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError):
            raise DeviceError(
                f"device {device!r} is not available in this torch build or on this machine; use cpu or auto"
            ) from None
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun job this process belongs to (NCCL on CUDA, gloo on CPU), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns_group = world_size > 1 and not dist.is_initialized()  # a caller's own group is used, not replaced
    if owns_group:
        store, rank, world_size = next(dist.rendezvous("env://"))
        # torchrun's agent keeps one store across --max-restarts attempts: without a per-attempt prefix, a
        # restarted worker can read the address of a peer that died in the previous attempt.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            # NCCL carries CUDA tensors only; the small CPU tensors (stop flags, eval counts) go over gloo.
            backend="cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo",
            store=dist.PrefixStore(f"attempt-{attempt}", store),
            rank=rank,
            world_size=world_size,
        )
    return DistInfo(rank, world_size, local_rank, dev, owns_group)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over every process in place (exact for integer counts); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over every process in place: an "any process says so" for 0/1 flags."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: object) -> list:
    """Every process's `obj`, in rank order (a list of one outside torchrun)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown_distributed(process: DistInfo) -> None:
    """Tear down the process group if `init_distributed` created it; a group the caller made stays theirs."""
    if process.owns_group and is_distributed():
        dist.destroy_process_group()
