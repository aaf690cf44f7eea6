"""Training and evaluation batches of uint8 images from a prepared store.

Batches leave here as uint8 (B,3,S,S) on the training device, with int64 labels; augmentation
(:mod:`alexnet.data.augment`) runs on the device afterwards.

Four ways to get the pixels, chosen by the arguments:

- ``in_memory=True``: the whole split is one uint8 tensor on the device (CIFAR-10 and Imagenette
  fit); a batch is one ``index_select`` there.
- streaming from raw uint8 shards (read with pread) or an array: background threads gather the next
  few batches (indices sorted within a batch for locality, then put back in shuffled order)
  into pinned memory when the device is a GPU; numpy's copies release the GIL.
- streaming with ``processes=True`` (a store whose shards hold JPEG bytes, decoded by
  ``images[idx]``; ``from_store`` sets it): ``torch.utils.data.DataLoader`` worker processes, one
  batch per task, so decoding runs in parallel outside the GIL.
- streaming with ``device_decode=True`` (JPEG shards and a CUDA device; ``from_store`` sets it there):
  threads gather each batch's JPEG bytes and the batch is decoded on the GPU in one call
  (``torchvision.io.decode_jpeg`` with ``device``, nvJPEG), so the CPU never decodes.

Shuffling and sharding: epoch ``e`` uses one permutation drawn from (seed, e); global batch ``k``
is ``perm[k*G:(k+1)*G]`` with ``G = batch_size * world_size``, and rank ``r`` takes its slice
``[r*B:(r+1)*B]``. The permutation depends only on (seed, epoch), so ``epoch(e, start_batch)``
resumes mid-epoch with exactly the batches an uninterrupted run would have produced.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, Self

import numpy as np
import torch

from alexnet.seeding import shuffle_generator
from alexnet.threads import one_intraop_thread


class _Store(Protocol):
    @property
    def encoding(self) -> str: ...

    @property
    def train_split(self) -> str: ...

    @property
    def eval_split(self) -> str: ...

    def images(self, split: str) -> Any: ...

    def labels(self, split: str) -> np.ndarray: ...

    def load_split(self, split: str) -> torch.Tensor: ...


Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Epoch ``epoch``'s shuffle: a CPU int64 permutation of ``range(n)``, a function of (seed, epoch)."""
    return torch.randperm(n, generator=shuffle_generator(seed, epoch))


def _as_labels(labels: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    out = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    out = out.to(device="cpu", dtype=torch.int64)
    if out.shape != (n,):
        raise ValueError(
            f"labels have shape {tuple(out.shape)} but there are {n} images; pass one label each"
        )
    return out


def _check_rank(rank: int, world_size: int, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")


def _load_all(images: Any, device: torch.device) -> torch.Tensor:
    """The whole split as one uint8 tensor on ``device`` (a real copy, not a view of a memory map)."""
    if isinstance(images, torch.Tensor):
        tensor = images
    else:
        tensor = torch.from_numpy(np.array(images[0 : len(images)], dtype=np.uint8, copy=True))
    if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N,3,S,S); got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.to(device)


class _Gather:
    """Fetch ``images[idx]`` for one batch on the host, sorted for locality, returned in ``idx`` order.

    A map-style dataset whose keys are whole batches, so DataLoader worker processes can run it too.
    """

    def __init__(self, images: Any, labels: torch.Tensor, pin: bool) -> None:
        self.images = images
        self.labels = labels
        self.pin = pin

    def __getitem__(self, idx: np.ndarray) -> Batch:
        order = np.argsort(idx, kind="stable")
        fetched = self.images[idx[order]]
        out = torch.empty(fetched.shape, dtype=torch.uint8, pin_memory=self.pin)
        # fetched[j] is image idx[order[j]], which belongs at position order[j]; numpy copies on
        # this thread alone (no OpenMP team to stall on a busy core).
        out.numpy()[order] = fetched
        return out, self.labels[torch.from_numpy(idx)]

    def __len__(self) -> int:
        return len(self.images)


def _threaded(
    gather: _Gather, index_lists: Sequence[np.ndarray], workers: int, prefetch: int
) -> Iterator[Batch]:
    """Run ``gather`` over ``index_lists`` in background threads, ``prefetch`` batches ahead, in order."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="alexnet-batches")
    pending: deque = deque()
    try:
        for idx in index_lists:
            pending.append(pool.submit(gather.__getitem__, idx))
            if len(pending) > prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class _Streaming:
    """How streamed batches are fetched: see the module docstring."""

    device: torch.device
    workers: int
    prefetch: int
    processes: bool
    device_decode: bool = False

    def __post_init__(self) -> None:
        if self.workers < 0 or self.prefetch < 1:
            raise ValueError(f"workers {self.workers} must be >= 0 and prefetch {self.prefetch} >= 1")

    def batches(
        self, images: Any, labels: torch.Tensor, index_lists: Sequence[np.ndarray]
    ) -> Iterator[Batch]:
        """The batches ``images[idx], labels[idx]`` for each ``idx`` in ``index_lists``, on the device."""
        if self.device_decode:
            yield from self._decoded(images, labels, index_lists)
            return
        pin = self.device.type == "cuda"
        # Forked worker processes must not touch CUDA (pinning does): there the DataLoader pins instead.
        gather = _Gather(images, labels, pin and not self.processes)
        if self.processes:
            host: Iterator[Batch] = iter(
                torch.utils.data.DataLoader(
                    gather,  # type: ignore[arg-type]
                    batch_size=None,
                    sampler=index_lists,
                    num_workers=self.workers,
                    pin_memory=pin,
                    prefetch_factor=max(1, self.prefetch // self.workers) if self.workers else None,
                )
            )
        else:
            host = _threaded(gather, index_lists, self.workers, self.prefetch)
        for batch, batch_labels in host:
            yield batch.to(self.device, non_blocking=pin), batch_labels.to(self.device, non_blocking=pin)

    def _decoded(self, images: Any, labels: torch.Tensor, index_lists: Sequence[np.ndarray]) -> Iterator[Batch]:
        if not getattr(images, "encoded", False):
            raise ValueError("device_decode needs a store of JPEG shards (alexnet prepare --encoding jpeg)")
        from torchvision.io import ImageReadMode, decode_jpeg

        gather = _GatherBytes(images, labels)
        for blobs, batch_labels in _threaded(gather, index_lists, self.workers, self.prefetch):
            decoded = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=self.device)
            yield torch.stack(decoded), batch_labels.to(self.device)


class _GatherBytes:
    """One batch's JPEG bytes (a list of uint8 tensors, in ``idx`` order) and labels, for decoding on the device."""

    def __init__(self, images: Any, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __getitem__(self, idx: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.images.blobs(idx), self.labels[torch.from_numpy(idx)]


def _streaming_images(images: Any) -> Any:
    if isinstance(images, torch.Tensor):
        if images.device.type != "cpu":
            raise ValueError(
                f"images are already on {images.device}; pass in_memory=True to batch them there"
            )
        return images.numpy()
    return images


class _Batches:
    """What both kinds of batches share: building from a store's split, and keeping the images and labels.
    `_split` names the store attribute of the default split."""

    _split: str

    @classmethod
    def from_store(cls, store: _Store, split: str | None = None, *, in_memory: bool = False,
                   **kwargs: Any) -> Self:
        """Batches of ``split`` (default: the store's training split for TrainBatches, its evaluation split
        for EvalBatches); other arguments as the constructor. JPEG shards are decoded on a CUDA device, else
        in worker processes, unless told otherwise."""
        split = split or getattr(store, cls._split)
        images = store.load_split(split) if in_memory else store.images(split)
        jpeg = store.encoding == "jpeg" and not in_memory
        kwargs.setdefault("device_decode", jpeg and torch.device(kwargs.get("device", "cpu")).type == "cuda")
        kwargs.setdefault("processes", jpeg and not kwargs["device_decode"])
        return cls(images, store.labels(split), in_memory=in_memory, **kwargs)

    def _hold(self, images: Any, labels: np.ndarray | torch.Tensor, part: slice | None, device: torch.device | str,
              in_memory: bool, streaming: tuple[int, int, bool, bool]) -> None:
        """Keep the device, the labels, and the images of `part` (None: all) on the device (in memory) or the
        whole split to stream from (`streaming`: workers, prefetch, processes, device_decode)."""
        self.device = torch.device(device)
        self.in_memory = in_memory
        self._streaming = _Streaming(self.device, *streaming)
        self.labels = _as_labels(labels, len(images))
        if in_memory:
            self.images = _load_all(images if part is None else images[part], self.device)
            self.labels = (self.labels if part is None else self.labels[part]).to(self.device)
        else:
            self.images = _streaming_images(images)


class TrainBatches(_Batches):
    """Shuffled training batches of one rank, a new permutation each epoch.

    Args:
        images: uint8 (N,3,S,S): a store's ``images(split)`` (memory map or JPEG shards), a numpy
            array or a torch tensor.
        labels: int64 (N,).
        batch_size: images per batch on this rank (the global batch is batch_size * world_size).
        seed: shuffle seed; epoch e's order is a function of (seed, e) only.
        rank, world_size: this process's place under torchrun.
        drop_last: drop the last incomplete global batch (required when world_size > 1, so every
            rank runs the same number of equal steps).
        device: where batches are delivered.
        in_memory: hold the whole split on ``device`` and batch there.
        workers: background gather threads, or DataLoader processes when ``processes``.
        prefetch: batches fetched ahead of the consumer when streaming.
        processes: gather in worker processes (stores of JPEG shards, decoded on access).
        device_decode: gather JPEG bytes and decode each batch on ``device`` (JPEG shards, a GPU).
    """

    _split = "train_split"

    def __init__(
        self, images: Any, labels: np.ndarray | torch.Tensor, batch_size: int, seed: int, rank: int = 0,
        world_size: int = 1, drop_last: bool = True, device: torch.device | str = "cpu", in_memory: bool = False,
        workers: int = 2, prefetch: int = 3, processes: bool = False, device_decode: bool = False,
    ) -> None:
        _check_rank(rank, world_size, batch_size)
        if world_size > 1 and not drop_last:
            raise ValueError(
                f"drop_last=False with world_size {world_size} would give ranks unequal last batches; "
                "use drop_last=True for distributed training"
            )
        self.n = len(images)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.drop_last = drop_last
        self._hold(images, labels, None, device, in_memory, (workers, prefetch, processes, device_decode))
        global_batch = batch_size * world_size
        self._len = self.n // global_batch if drop_last else -(-self.n // global_batch)
        if self._len == 0:
            raise ValueError(
                f"{self.n} images give no full global batch of {global_batch} "
                f"(batch_size {batch_size} x world_size {world_size}); "
                "lower batch_size or set drop_last=False"
            )

    def __len__(self) -> int:
        return self._len

    def indices(self, epoch: int, batch_idx: int) -> torch.Tensor:
        """Dataset indices (CPU int64) of this rank's batch ``batch_idx`` in ``epoch``."""
        return self._rank_indices(epoch_permutation(self.n, self.seed, epoch), batch_idx)

    def _rank_indices(self, perm: torch.Tensor, batch_idx: int) -> torch.Tensor:
        start = batch_idx * self.batch_size * self.world_size + self.rank * self.batch_size
        return perm[start : start + self.batch_size]

    def epoch(self, epoch: int, start_batch: int = 0, gather: bool = True
              ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield ``(batch_idx, images uint8 (B,3,S,S), labels int64 (B,))`` on the device.

        ``start_batch`` skips the batches a checkpoint already consumed; the rest are identical
        to those of an uninterrupted epoch. ``gather=False`` (in memory only) yields the batch's indices
        into ``self.images`` (int64 (B,)) in place of its images, for a consumer that gathers them itself
        (`Augmenter.train`'s ``index``).
        """
        if not 0 <= start_batch <= self._len:
            raise ValueError(f"start_batch {start_batch} is outside this epoch's [0, {self._len}] batches")
        if not gather and not self.in_memory:
            raise ValueError("TrainBatches.epoch(gather=False) needs the split in memory (in_memory=True)")
        perm = epoch_permutation(self.n, self.seed, epoch)
        steps = range(start_batch, self._len)
        if self.in_memory:
            perm = perm.to(self.device)
            single = one_intraop_thread if self.device.type == "cpu" else contextlib.nullcontext
            for k in steps:
                idx = self._rank_indices(perm, k)
                if not gather:
                    yield k, idx, self.labels.index_select(0, idx)
                    continue
                with single():  # 128 row copies: robust to a busy core, see one_intraop_thread
                    batch = self.images.index_select(0, idx), self.labels.index_select(0, idx)
                yield k, *batch
            return
        index_lists = [self._rank_indices(perm, k).numpy() for k in steps]
        stream = self._streaming.batches(self.images, self.labels, index_lists)
        for k, (images, labels) in zip(steps, stream, strict=True):
            yield k, images, labels


class EvalBatches(_Batches):
    """Evaluation batches of one rank: a contiguous part of the split, every image exactly once.

    Rank r holds images ``[r*N//W, (r+1)*N//W)`` (parts differ by at most one image, so batch
    counts differ by at most one); no padding, so gathering every rank's outputs counts each
    image once. Iterating yields ``(images uint8 (B,3,S,S), labels int64 (B,))`` in order; the
    last batch of a part may be smaller.
    """

    _split = "eval_split"

    def __init__(
        self, images: Any, labels: np.ndarray | torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1,
        device: torch.device | str = "cpu", in_memory: bool = False, workers: int = 2, prefetch: int = 3,
        processes: bool = False, device_decode: bool = False,
    ) -> None:
        _check_rank(rank, world_size, batch_size)
        n = len(images)
        self.batch_size = batch_size
        self.start, self.stop = rank * n // world_size, (rank + 1) * n // world_size
        self._hold(images, labels, slice(self.start, self.stop), device, in_memory,
                   (workers, prefetch, processes, device_decode))

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def _bounds(self) -> list[tuple[int, int]]:
        return [
            (a, min(a + self.batch_size, self.stop)) for a in range(self.start, self.stop, self.batch_size)
        ]

    def __iter__(self) -> Iterator[Batch]:
        if self.in_memory:
            for a, b in self._bounds():
                yield (
                    self.images[a - self.start : b - self.start],
                    self.labels[a - self.start : b - self.start],
                )
            return
        index_lists = [np.arange(a, b) for a, b in self._bounds()]
        yield from self._streaming.batches(self.images, self.labels, index_lists)
