"""Every source layout lists the same labelled images, sorted, and reports what it cannot use."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from alexnet.data import labels
from alexnet.data.sources import Entry, Source, ilsvrc_val_labels, open_source
from alexnet.errors import DataError
from helpers_data import data_write_tree

SYNSETS = ["n01440764", "n02102040", "n03888257"]


def _tree(images: dict[str, bytes]) -> dict[str, bytes]:
    """train/ and val/ with class folders; a non-ASCII name and a duplicate among them."""
    blobs = list(images.values())
    tree = {}
    for s, split in enumerate(["train", "val"]):
        for c, synset in enumerate(SYNSETS):
            for i in range(2):
                tree[f"{split}/{synset}/{synset}_{i}.JPEG"] = blobs[(s + c + i) % len(blobs)]
    tree["train/n01440764/bild_äöü_日本.JPEG"] = blobs[0]
    tree["train/n01440764/copy_of_0.JPEG"] = tree["train/n01440764/n01440764_0.JPEG"]
    return tree


def _read_all(src: Source) -> dict[tuple[str, str, str], bytes]:
    """(split, label, path below the split folder) -> bytes for every entry."""
    out = {}
    for e, payload in src.read(src.entries):
        assert not isinstance(payload, Exception), payload
        below = e.name.split(f"{e.split}/", 1)[1]
        out[(e.split, e.label, below)] = payload
    return out


@pytest.mark.parametrize("kind", ["folder", "tar", "tar.gz", "zip"])
def test_class_folders_in_every_container(tmp_path, kind, data_good_images):
    tree = _tree(data_good_images)
    wrapped = {f"mydata/{k}": v for k, v in tree.items()} if kind != "folder" else tree
    dest = tmp_path / ("data" if kind == "folder" else f"data.{kind}")
    src = open_source(data_write_tree(wrapped, dest, kind))
    assert src.splits == ["train", "val"]
    assert src.classes == SYNSETS
    assert src.entries == sorted(src.entries)
    got = _read_all(src)
    assert got == {(k.split("/")[0], k.split("/")[1], k.split("/", 1)[1]): v for k, v in tree.items()}
    assert src.problems == []


def test_single_split_folder_takes_its_name(tmp_path, data_good_images):
    root = data_write_tree({"a/x.JPEG": data_good_images["rgb"]}, tmp_path / "val")
    assert [(e.split, e.label) for e in open_source(root).entries] == [("val", "a")]
    root = data_write_tree({"a/x.JPEG": data_good_images["rgb"]}, tmp_path / "pets")
    assert [(e.split, e.label) for e in open_source(root).entries] == [("train", "a")]


def _ilsvrc(tmp_path: Path, images: dict[str, bytes]) -> tuple[Path, dict[str, str], dict[str, bytes]]:
    """ILSVRC2012_img_train.tar of per-class inner tars and a flat ILSVRC2012_img_val.tar."""
    root = tmp_path / "ilsvrc"
    root.mkdir()
    blobs = list(images.values())
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, synset in enumerate(SYNSETS):
            inner_buf = io.BytesIO()
            with tarfile.open(fileobj=inner_buf, mode="w") as inner:
                for i in range(3):
                    data = blobs[(c + i) % len(blobs)]
                    info = tarfile.TarInfo(f"{synset}_{i}.JPEG")
                    info.size = len(data)
                    inner.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{synset}.tar")
            info.size = inner_buf.tell()
            inner_buf.seek(0)
            outer.addfile(info, inner_buf)
    val_truth = {f"ILSVRC2012_val_{i:08d}": SYNSETS[(i * 2) % 3] for i in range(1, 8)}
    val_bytes = {name: blobs[i % len(blobs)] for i, name in enumerate(val_truth)}
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tf:
        for name, data in val_bytes.items():
            info = tarfile.TarInfo(f"{name}.JPEG")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return root, val_truth, val_bytes


def test_ilsvrc_train_tar_of_tars_and_val_tar_with_csv(tmp_path, data_good_images):
    root, truth, val_bytes = _ilsvrc(tmp_path, data_good_images)
    with pytest.raises(DataError, match="devkit"):
        open_source(root)
    rows = "".join(f"{name},{synset}\n" for name, synset in truth.items())
    (root / "ILSVRC2012_val_labels.csv").write_text("ImageId,PredictionString\n" + rows)
    src = open_source(root)
    assert src.splits == ["train", "val"] and src.classes == SYNSETS
    train = [e for e in src.entries if e.split == "train"]
    assert [(e.label, e.name) for e in train] == [
        (s, f"{s}.tar/{s}_{i}.JPEG") for s in SYNSETS for i in range(3)
    ]
    got = _read_all_raw(src)
    blobs = list(data_good_images.values())
    for e in train:
        c, i = SYNSETS.index(e.label), int(e.name[-6])
        assert got[e.name] == blobs[(c + i) % len(blobs)]
    val = {e.name.removesuffix(".JPEG"): e.label for e in src.entries if e.split == "val"}
    assert val == truth
    assert all(got[f"{n}.JPEG"] == b for n, b in val_bytes.items())


def _read_all_raw(src: Source) -> dict[str, bytes]:
    return {e.name: payload for e, payload in src.read(src.entries)}


def test_ground_truth_ids_follow_meta_mat_order_not_sorted_order():
    # meta.mat numbers synsets in its own order: id 1 is not the first sorted synset.
    id_to_wnid = {1: "n03888257", 2: "n01440764", 3: "n02102040"}
    got = ilsvrc_val_labels("2\n1\n3\n1\n", id_to_wnid)
    assert got == {
        "ILSVRC2012_val_00000001": "n01440764",
        "ILSVRC2012_val_00000002": "n03888257",
        "ILSVRC2012_val_00000003": "n02102040",
        "ILSVRC2012_val_00000004": "n03888257",
    }
    with pytest.raises(DataError, match="id 7"):
        ilsvrc_val_labels("7\n", id_to_wnid)


def test_devkit_meta_mat(tmp_path, data_good_images):
    root, truth, _ = _ilsvrc(tmp_path, data_good_images)
    order = ["n03888257", "n01440764", "n02102040"]  # the devkit's own numbering, 1-based
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{order.index(s) + 1}\n" for s in truth.values())
    )
    try:
        from scipy.io import savemat
    except ImportError:
        (root / "meta.mat").write_bytes(b"MATLAB 5.0 MAT-file")
        with pytest.raises(DataError, match="pip install scipy"):
            open_source(root)
        return
    synsets = np.array(
        [(i + 1, w, 0) for i, w in enumerate(order)],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")],
    )
    savemat(root / "meta.mat", {"synsets": synsets})
    src = open_source(root)
    assert {e.name.removesuffix(".JPEG"): e.label for e in src.entries if e.split == "val"} == truth


def test_flat_folder_with_annotations_file(tmp_path, data_good_images):
    tree = {
        "train/n01440764/images/a.JPEG": data_good_images["rgb"],
        "train/n02102040/images/b.JPEG": data_good_images["rgb"],
        "val/images/val_0.JPEG": data_good_images["grey"],
        "val/images/val_1.JPEG": data_good_images["cmyk"],
        "val/images/val_2.JPEG": data_good_images["tall"],
        "val/val_annotations.txt": b"val_0.JPEG\tn02102040\t0\t0\t10\t10\nval_1.JPEG\tn01440764\t1\t2\t3\n",
    }
    src = open_source(data_write_tree(tree, tmp_path / "tiny"))
    got = [(e.split, e.label, e.name) for e in src.entries]
    assert got == [
        ("train", "n01440764", "train/n01440764/images/a.JPEG"),
        ("train", "n02102040", "train/n02102040/images/b.JPEG"),
        ("val", "n01440764", "val/images/val_1.JPEG"),
        ("val", "n02102040", "val/images/val_0.JPEG"),
    ]
    assert src.problems == [("val/images/val_2.JPEG", "no label for this file in the annotations")]


def _cifar_batches(rng: np.random.Generator) -> dict[str, bytes]:
    names = [b"airplane", b"automobile", b"bird"]
    files = {"batches.meta": pickle.dumps({b"label_names": names}, protocol=2)}
    for batch, n in [("data_batch_1", 5), ("data_batch_2", 4), ("test_batch", 3)]:
        files[batch] = pickle.dumps(
            {
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": [int(x) for x in rng.integers(0, 3, n)],
                b"filenames": [f"img_{batch}_{i}.png".encode() for i in range(n)],
            },
            protocol=2,
        )
    return files


@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_cifar_python_batches(tmp_path, kind):
    files = _cifar_batches(np.random.default_rng(0))
    tree = {f"cifar-10-batches-py/{k}": v for k, v in files.items()}
    dest = tmp_path / ("cifar" if kind == "folder" else "cifar-10-python.tar.gz")
    src = open_source(data_write_tree(tree, dest, kind))
    assert src.classes == ["airplane", "automobile", "bird"]
    assert src.splits == ["train", "test"]
    assert len([e for e in src.entries if e.split == "train"]) == 9
    for e, pixels in src.read(src.entries):
        batch, row = e.key
        d = pickle.loads(files[batch], encoding="bytes")
        assert e.label == ["airplane", "automobile", "bird"][d[b"labels"][row]]
        np.testing.assert_array_equal(pixels, d[b"data"][row].reshape(3, 32, 32).transpose(1, 2, 0))


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_cifar_batch_that_would_run_code_is_refused(tmp_path, monkeypatch):
    files = _cifar_batches(np.random.default_rng(0))
    files["data_batch_1"] = pickle.dumps({b"data": _Boom()}, protocol=2)
    root = data_write_tree(files, tmp_path / "cifar")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="os.system|posix.system"):
        open_source(root)
    assert not (tmp_path / "PWNED").exists()


def test_links_loops_and_empty_folders_are_reported_not_raised(tmp_path, data_good_images):
    root = data_write_tree({"train/a/x.JPEG": data_good_images["rgb"]}, tmp_path / "d")
    (root / "train" / "b").mkdir()
    os.symlink("loop2", root / "train" / "a" / "loop1.JPEG")
    os.symlink("loop1.JPEG", root / "train" / "a" / "loop2")
    os.symlink("../..", root / "train" / "a" / "up")  # a folder loop
    os.symlink("missing.JPEG", root / "train" / "a" / "dangling.JPEG")
    os.mkfifo(root / "train" / "a" / "pipe.JPEG")
    src = open_source(root)
    assert [e.name for e in src.entries] == ["train/a/x.JPEG"]
    reasons = dict(src.problems)
    assert "loop" in reasons["train/a/loop1.JPEG"]
    assert "loop" in reasons["train/a/up"]
    assert "cannot read" in reasons["train/a/dangling.JPEG"]
    assert "not a regular file" in reasons["train/a/pipe.JPEG"]
    assert "empty class folder" in reasons["train/b"]


def test_file_vanishing_before_read_yields_the_error(tmp_path, data_good_images):
    root = data_write_tree({"a/x.JPEG": data_good_images["rgb"], "a/y.JPEG": b"1"}, tmp_path / "d")
    src = open_source(root)
    (root / "a" / "y.JPEG").unlink()
    got = {e.name: p for e, p in src.read(src.entries)}
    assert got["a/x.JPEG"] == data_good_images["rgb"]
    assert isinstance(got["a/y.JPEG"], FileNotFoundError)


def test_missing_source_and_unknown_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        open_source(tmp_path / "nothing-here")
    (tmp_path / "x.bin").write_bytes(b"abc")
    with pytest.raises(DataError, match="neither a folder nor"):
        open_source(tmp_path / "x.bin")


def test_labels_names_and_indices():
    assert labels.imagenet_synsets()[0] == "n01440764" and len(labels.imagenet_synsets()) == 1000
    assert labels.imagenet_index("n03888257") == 701
    assert labels.imagenet_index("cat") is None
    assert labels.class_names(["n01440764", "n03888257", "cat"]) == ["tench", "parachute", "cat"]
    assert Entry("train", "b", "1") < Entry("train", "b", "2") < Entry("val", "a", "0")


@pytest.mark.parametrize("kind", ["folder", "zip", "tar", "tar.gz"])
def test_tiny_imagenet_as_published_with_side_files_at_every_level(tmp_path, data_good_images,
                                                                    kind):
    """A public copy of Tiny ImageNet: an unlabeled test/ split holding images/ and a .DS_Store, side files of
    macOS and Windows at the top, in the splits and in class folders (and a zip's __MACOSX/ tree). It
    prepares to its labelled classes only; no side file is a class, an entry or a note."""
    rgb = data_good_images["rgb"]
    tree = {
        "tiny-imagenet-200/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "tiny-imagenet-200/Thumbs.db": b"thumbs",
        "tiny-imagenet-200/train/.DS_Store": b"x",
        "tiny-imagenet-200/train/n01443537/.DS_Store": b"x",
        "tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG": rgb,
        "tiny-imagenet-200/train/n01443537/images/._n01443537_0.JPEG": b"\x00\x05\x16\x07AppleDouble",
        "tiny-imagenet-200/train/n01629819/images/n01629819_0.JPEG": rgb,
        "tiny-imagenet-200/train/n01629819/desktop.ini": b"[.ShellClassInfo]",
        "tiny-imagenet-200/val/.DS_Store": b"x",
        "tiny-imagenet-200/val/images/val_0.JPEG": rgb,
        "tiny-imagenet-200/val/val_annotations.txt": b"val_0.JPEG\tn01629819\t0\t0\t10\t10\n",
        "tiny-imagenet-200/test/.DS_Store": b"x",
        "tiny-imagenet-200/test/images/test_0.JPEG": rgb,
        "__MACOSX/tiny-imagenet-200/._train": b"\x00\x05\x16\x07",
        "__MACOSX/tiny-imagenet-200/train/n01443537/images/._n01443537_0.JPEG": b"\x00\x05\x16\x07",
    }
    dest = tmp_path / ("tiny" if kind == "folder" else f"tiny-imagenet-200.{kind}")
    src = open_source(data_write_tree(tree, dest, kind))
    assert src.classes == ["n01443537", "n01629819"]
    assert [(e.split, e.label) for e in src.entries] == [("train", "n01443537"), ("train", "n01629819"),
                                                          ("val", "n01629819")]
    assert src.problems == [("test/images/", "unlabeled split (1 files, no class folders or annotations): "
                                             "not stored")]
