"""Training and evaluation batches: shuffling, resumption, sharding across ranks, exactly-once evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.data.loader import EvalBatches, TrainBatches, epoch_permutation
from alexnet.data.store import ShardedImages, write_shard

N, S = 103, 6


def _data(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with i % 256 and labelled i, so every batch shows which images it holds."""
    labels = np.arange(n, dtype=np.int64)
    images = np.broadcast_to((labels % 256).astype(np.uint8)[:, None, None, None], (n, 3, S, S)).copy()
    return images, labels


class _Decoding:
    """An array-like that is not an ndarray (like a store of JPEG shards): exercises worker processes."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.images[idx]


def _consistent(batches: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
    for _, images, labels in batches:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert torch.equal(images[:, 0, 0, 0].long(), labels % 256)
        assert torch.equal(images, images[:, :1, :1, :1].expand_as(images))


MODES = {
    "in_memory": dict(in_memory=True),
    "threads": dict(in_memory=False, workers=2),
    "processes": dict(in_memory=False, workers=2, processes=True),
}


@pytest.mark.parametrize("mode", MODES)
def test_batches_follow_the_epoch_permutation_in_every_mode(mode: str) -> None:
    images, labels = _data()
    source = _Decoding(images) if mode == "processes" else images
    batches = TrainBatches(source, labels, batch_size=8, seed=5, **MODES[mode])
    got = list(batches.epoch(2))
    _consistent(got)
    perm = epoch_permutation(N, 5, 2)
    assert len(got) == len(batches) == N // 8
    for k, _, batch_labels in got:
        assert torch.equal(batch_labels, perm[k * 8 : (k + 1) * 8])  # shuffled order restored after sorting
        assert torch.equal(batch_labels, batches.indices(2, k))


def test_each_epoch_is_a_new_shuffle_covering_the_data() -> None:
    images, labels = _data()
    batches = TrainBatches(images, labels, batch_size=10, seed=1, drop_last=False, in_memory=True)
    orders = [torch.cat([lab for _, _, lab in batches.epoch(e)]) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(N))  # every image once, last batch partial
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    again = torch.cat([lab for _, _, lab in batches.epoch(1)])
    assert torch.equal(orders[1], again)


@pytest.mark.parametrize("mode", ["in_memory", "threads"])
def test_resume_mid_epoch_yields_the_identical_remaining_batches(mode: str) -> None:
    images, labels = _data()
    full = list(TrainBatches(images, labels, 8, seed=9, **MODES[mode]).epoch(4))
    # A fresh object, as after a restart from a checkpoint saved at (epoch 4, batch 5).
    resumed = list(TrainBatches(images, labels, 8, seed=9, **MODES[mode]).epoch(4, start_batch=5))
    assert [k for k, _, _ in resumed] == list(range(5, len(full)))
    for (k1, x1, y1), (k2, x2, y2) in zip(full[5:], resumed, strict=True):
        assert k1 == k2 and torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="start_batch 99"):
        next(TrainBatches(images, labels, 8, seed=9).epoch(0, start_batch=99))


def test_ranks_take_disjoint_slices_of_each_global_batch() -> None:
    images, labels = _data()
    world, b = 3, 4
    ranks = [
        TrainBatches(images, labels, b, seed=2, rank=r, world_size=world, in_memory=True) for r in range(3)
    ]
    assert {len(r) for r in ranks} == {N // (b * world)}
    per_rank = [list(r.epoch(7)) for r in ranks]
    perm = epoch_permutation(N, 2, 7)
    for k in range(len(ranks[0])):
        parts = [per_rank[r][k][2] for r in range(world)]
        assert torch.equal(torch.cat(parts), perm[k * b * world : (k + 1) * b * world])
    seen = torch.cat([lab for batches in per_rank for _, _, lab in batches])
    assert len(set(seen.tolist())) == len(seen) == len(ranks[0]) * b * world
    with pytest.raises(ValueError, match="drop_last=True"):
        TrainBatches(images, labels, b, seed=2, rank=0, world_size=world, drop_last=False)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("world", [1, 3, 4])
def test_evaluation_sees_every_image_exactly_once(in_memory: bool, world: int) -> None:
    images, labels = _data()
    ranks = [
        EvalBatches(images, labels, 10, rank=r, world_size=world, in_memory=in_memory) for r in range(world)
    ]
    sizes = [r.stop - r.start for r in ranks]
    assert max(sizes) - min(sizes) <= 1 and max(len(r) for r in ranks) - min(len(r) for r in ranks) <= 1
    seen = []
    for r in ranks:
        batches = [(0, x, y) for x, y in r]
        _consistent(batches)
        assert len(batches) == len(r)
        seen.append(torch.cat([y for _, _, y in batches]))
        assert torch.equal(seen[-1], torch.arange(r.start, r.stop))  # contiguous, in order
    assert torch.equal(torch.cat(seen), torch.arange(N))  # no image twice, none missing, no padding


def test_jpeg_store_shards_are_decoded_in_worker_processes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)
    (tmp_path / "train").mkdir()
    paths = [write_shard(tmp_path, "train", i, images[i * 10 : (i + 1) * 10], "jpeg") for i in range(2)]
    sharded = ShardedImages(paths, [10, 10], "jpeg", 16)

    class OnlyInWorkers:
        """Decodes only inside a DataLoader worker process: the main process doing it is a failure."""

        def __len__(self) -> int:
            return len(sharded)

        def __getitem__(self, idx):
            if torch.utils.data.get_worker_info() is None:
                raise AssertionError("decoded in the main process, not in a worker")
            return sharded[idx]

    labels = np.arange(20)
    batches = TrainBatches(OnlyInWorkers(), labels, 6, seed=0, workers=2, processes=True)
    got = list(batches.epoch(0))
    assert len(got) == len(batches) == 3  # 20 images, batches of 6, the last partial one dropped
    assert len({int(i) for _, _, y in got for i in y}) == 18
    for _, x, y in got:
        assert torch.equal(x, torch.from_numpy(sharded[y.numpy()]))


def _jpeg_shards(tmp_path: Path) -> ShardedImages:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)
    (tmp_path / "train").mkdir()
    paths = [write_shard(tmp_path, "train", i, images[i * 10 : (i + 1) * 10], "jpeg") for i in range(2)]
    return ShardedImages(paths, [10, 10], "jpeg", 16)


def test_device_decode_gives_the_batches_decoding_on_the_host_gives(tmp_path: Path) -> None:
    # On the CPU both paths decode with the same library, so the batches are identical; on a GPU
    # (nvJPEG) benchmarks/gpu_checks.py compares them within a tolerance.
    sharded = _jpeg_shards(tmp_path)
    labels = np.arange(20)
    host = list(TrainBatches(sharded, labels, 6, seed=4, workers=2, processes=True).epoch(2))
    device = list(TrainBatches(sharded, labels, 6, seed=4, workers=2, device_decode=True).epoch(2))
    assert len(host) == len(device) == 3
    for (k1, x1, y1), (k2, x2, y2) in zip(host, device, strict=True):
        assert k1 == k2 and torch.equal(y1, y2) and torch.equal(x1, x2)
    raw = np.zeros((20, 3, 16, 16), dtype=np.uint8)
    with pytest.raises(ValueError, match="JPEG shards"):
        list(TrainBatches(raw, labels, 6, seed=4, device_decode=True).epoch(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["in_memory", "threads"])
def test_cuda_batches_equal_cpu_batches(mode: str) -> None:
    images, labels = _data()
    cpu = list(TrainBatches(images, labels, 8, seed=3, **MODES[mode]).epoch(1))
    cuda = list(TrainBatches(images, labels, 8, seed=3, device="cuda", **MODES[mode]).epoch(1))
    for (k1, x1, y1), (k2, x2, y2) in zip(cpu, cuda, strict=True):
        assert x2.is_cuda and y2.is_cuda
        assert k1 == k2 and torch.equal(x1, x2.cpu()) and torch.equal(y1, y2.cpu())
