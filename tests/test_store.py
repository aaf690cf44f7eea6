"""The store on disk: atomic writes, sharded reads in every indexing form, JPEG shards, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from alexnet.data.store import (
    _PREAD,
    ShardedImages,
    Store,
    atomic_write,
    shard_path,
    write_json,
    write_shard,
)
from alexnet.errors import DataError


def _write_store(root, encoding: str, counts=(3, 0, 4, 2), size: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (sum(counts), 3, size, size), dtype=np.uint8)
    (root / "train").mkdir(parents=True)
    start = 0
    for i, n in enumerate(counts):
        write_shard(root, "train", i, images[start : start + n], encoding)
        start += n
    np.save(root / "train" / "labels.npy", np.arange(sum(counts), dtype=np.int64) % 2)
    write_json(root / "train" / "files.json", [f"img{i}" for i in range(sum(counts))])
    np.save(root / "mean.npy", images.mean(axis=0, dtype=np.float64).astype(np.float32))
    meta = {
        "version": 1,
        "size": size,
        "encoding": encoding,
        "source": "test",
        "splits": {"train": {"images": sum(counts), "classes": 2, "shards": list(counts)}},
        "classes": ["a", "b"],
        "class_names": ["a", "b"],
        "eigvals": [3.0, 2.0, 1.0],
        "eigvecs": np.eye(3).tolist(),
        "stats_split": "train",
    }
    write_json(root / "meta.json", meta)
    return images


def test_raw_store_indexing_matches_numpy(tmp_path):
    images = _write_store(tmp_path, "raw")
    store = Store.open(tmp_path)
    view = store.images("train")
    assert len(view) == 9 and view.shape == (9, 3, 8, 8)
    np.testing.assert_array_equal(view[4], images[4])
    np.testing.assert_array_equal(view[-1], images[-1])
    np.testing.assert_array_equal(view[1:8], images[1:8])
    np.testing.assert_array_equal(view[::-2], images[::-2])
    index = np.array([8, 0, 3, 3, 6, 2])
    np.testing.assert_array_equal(view[index], images[index])
    loaded = store.load_split("train")
    assert loaded.dtype == torch.uint8
    np.testing.assert_array_equal(loaded.numpy(), images)
    assert store.labels("train").tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert store.files("train")[2] == "img2"
    assert store.mean.shape == (3, 8, 8) and store.mean.dtype == np.float32
    assert (store.num_classes, store.train_split, store.splits) == (2, "train", ["train"])
    with pytest.raises(IndexError):
        view[9]
    with pytest.raises(DataError, match="no val or test"):
        _ = store.eval_split


@pytest.mark.skipif(not _PREAD, reason="without preadv raw shards are memory-mapped (truncation is a SIGBUS)")
def test_raw_reads_survive_pickling_and_name_a_shard_truncated_under_them(tmp_path):
    """Raw shards are read with pread: a pickled view (a worker process) carries no pixels and opens its own
    files, and a shard cut short after the store was opened is an error that names it, not zeros or a crash."""
    import pickle

    images = _write_store(tmp_path, "raw")
    view = Store.open(tmp_path).images("train")
    index = np.array([7, 1, 2])
    np.testing.assert_array_equal(view[index], images[index])  # opens descriptors
    blob = pickle.dumps(view)
    assert len(blob) < images.nbytes  # the header facts, not the pixels
    np.testing.assert_array_equal(pickle.loads(blob)[index], images[index])
    shard = shard_path(tmp_path, "train", 2, "raw")  # images 3..6
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 10)
    np.testing.assert_array_equal(view[[0, 1]], images[[0, 1]])
    with pytest.raises(DataError, match=f"{shard.name}.*truncated.*prepare the store again"):
        view[[6]]


def test_a_raw_shard_of_the_wrong_shape_is_named(tmp_path):
    _write_store(tmp_path, "raw")
    np.save(shard_path(tmp_path, "train", 0, "raw"), np.zeros((3, 3, 4, 4), dtype=np.uint8))  # 4 px, not 8
    with pytest.raises(DataError, match=r"shard-00000.*\(3, 3, 4, 4\).*\(n, 3, 8, 8\) uint8"):
        Store.open(tmp_path).images("train")


def test_jpeg_store_decodes_close_to_the_raw_pixels(tmp_path):
    size = 64
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = np.stack([xx * 3, yy * 3, (xx + yy) * 2]).astype(np.uint8)
    images = np.stack([smooth, smooth[:, ::-1], 255 - smooth])
    (tmp_path / "train").mkdir()
    write_shard(tmp_path, "train", 0, images[:2], "jpeg")
    write_shard(tmp_path, "train", 1, images[2:], "jpeg")
    view = ShardedImages([shard_path(tmp_path, "train", i, "jpeg") for i in range(2)], [2, 1], "jpeg", size)
    got = view[np.array([2, 0, 1])]
    assert got.shape == (3, 3, size, size)
    error = np.abs(got.astype(int) - images[[2, 0, 1]].astype(int))
    assert error.mean() < 1.5 and error.max() < 24  # quality 95
    np.testing.assert_array_equal(view[0:2], view[np.array([0, 1])])


def test_open_names_the_path_when_meta_is_missing(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="half.*incomplete"):
        Store.open(tmp_path / "half")
    _write_store(tmp_path / "s", "raw")
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0] = 5
    write_json(tmp_path / "s" / "meta.json", meta)
    with pytest.raises(DataError, match="shard-00000.npy holds 3 images"):
        Store.open(tmp_path / "s").images("train")


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"a": 1})

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.slow
def test_disk_full_during_shard_write_is_clear_and_leaves_nothing(tmp_path):
    script = textwrap.dedent(
        f"""
        import resource, numpy as np
        from pathlib import Path
        from alexnet.data.store import write_shard
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        write_shard(Path({str(tmp_path)!r}), "train", 0, np.zeros((4, 3, 64, 64), np.uint8), "raw")
        """
    )
    (tmp_path / "train").mkdir()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "disk full while writing" in proc.stderr and "shard-00000.npy" in proc.stderr
    assert list((tmp_path / "train").iterdir()) == []
