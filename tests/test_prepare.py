"""`prepare`: every mode decoded, bad files reported, exact mean and PCA, resumable, disk-full safe."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from alexnet.data.decode import decode_rgb, resize_center_crop
from alexnet.data.prepare import format_prepare_summary, prepare_store
from alexnet.data.store import Store
from alexnet.errors import DataError
from helpers_data import data_reference, data_write_tree

SIZE = 32
A, B = "n01440764", "n02102040"


@pytest.fixture(scope="module")
def data_messy_tree(data_good_images, data_bad_files) -> dict[str, bytes]:
    """Every good image mode and every bad file in train/A, plus a duplicate and a non-ASCII name."""
    tree = {f"train/{A}/{kind}.JPEG": data for kind, data in data_good_images.items()}
    tree.update({f"train/{A}/{name}": data for name, (data, _) in data_bad_files.items()})
    tree[f"train/{A}/dup_of_rgb.JPEG"] = data_good_images["rgb"]
    tree[f"train/{A}/ünïcödé_名前.JPEG"] = data_good_images["tall"]
    tree[f"train/{B}/b0.JPEG"] = data_good_images["tall"]
    tree[f"train/{B}/b1.JPEG"] = data_good_images["grey"]
    tree[f"val/{A}/v0.JPEG"] = data_good_images["cmyk"]
    tree[f"val/{B}/v1.JPEG"] = data_good_images["rgb"]
    return tree


def _messy_folder(root: Path, tree: dict[str, bytes]) -> Path:
    data_write_tree(tree, root)
    (root / "train" / "n09999999").mkdir()  # an empty class folder
    os.symlink("loop_b.JPEG", root / "train" / A / "loop_a.JPEG")
    os.symlink("loop_a.JPEG", root / "train" / A / "loop_b.JPEG")
    os.symlink("/nonexistent/x.JPEG", root / "train" / A / "unreadable.JPEG")
    return root


def test_messy_folder_converts_every_mode_and_reports_every_bad_file(
    tmp_path, capfd, data_messy_tree, data_bad_files
):
    root = _messy_folder(tmp_path / "messy", data_messy_tree)
    summary = prepare_store(root, tmp_path / "store", size=SIZE, workers=2, shard_size=4, progress=False)
    good = {k: v for k, v in data_messy_tree.items() if Path(k).name not in data_bad_files}
    store = Store.open(tmp_path / "store")

    # nothing valid lost: every good file is in the store, with its label and its pixels
    for split in ("train", "val"):
        names = store.files(split)
        assert sorted(names) == sorted(k for k in good if k.startswith(split + "/"))
        assert summary["splits"][split]["images"] == len(names)
        images, labels = store.images(split), store.labels(split)
        for i, name in enumerate(names):
            assert store.classes[labels[i]] == name.split("/")[1]
            diff = np.abs(images[i].astype(int) - data_reference(good[name], SIZE).astype(int))
            assert diff.max() <= 1, (name, diff.max())
    assert store.classes == [A, B] and store.class_names == ["tench", "English Springer Spaniel"]

    # every bad file reported with its reason, in the summary, in report.json and on the console
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    for name, (_, word) in data_bad_files.items():
        assert word in reasons.pop(f"train/{A}/{name}"), name
    assert "loop" in reasons.pop(f"train/{A}/loop_a.JPEG")
    assert "loop" in reasons.pop(f"train/{A}/loop_b.JPEG")
    assert "cannot read" in reasons.pop(f"train/{A}/unreadable.JPEG")
    assert "empty class folder" in reasons.pop("train/n09999999")
    assert reasons == {}
    assert json.loads((tmp_path / "store" / "report.json").read_text())["skipped"] == summary["skipped"]
    err = capfd.readouterr().err
    assert f"skipped train/{A}/truncated.JPEG: corrupt JPEG" in err
    assert f"skipped train/{A}/bomb.png:" in err
    assert "skipped 9 file(s)" in format_prepare_summary(summary)


def test_mean_and_pca_equal_numpy_over_the_stored_train_images(tmp_path, data_messy_tree):
    root = data_write_tree({k: v for k, v in data_messy_tree.items() if k.endswith(".JPEG")}, tmp_path / "d")
    summary = prepare_store(root, tmp_path / "s", size=SIZE, workers=2, shard_size=3, progress=False)
    store = Store.open(tmp_path / "s")
    train = store.load_split("train").numpy().astype(np.float64)
    np.testing.assert_allclose(store.mean, train.mean(axis=0), rtol=1e-6)
    pixels = train.transpose(1, 0, 2, 3).reshape(3, -1)
    eigvals, eigvecs = np.linalg.eigh(np.cov(pixels, bias=True))
    np.testing.assert_allclose(store.eigvals, eigvals[::-1], rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(store.eigvecs * eigvecs[:, ::-1], axis=0)), 1.0, rtol=1e-9)
    assert summary["eigvals"] == store.eigvals.tolist()
    assert store.eigvals[0] > store.eigvals[1] > store.eigvals[2] > 0


def test_pixel_limit_and_class_with_no_readable_image(
    tmp_path, data_good_images, data_bad_files
):
    tree = {f"train/{A}/big.JPEG": data_good_images["rgb"], f"train/{A}/small.JPEG": data_good_images["grey"]}
    root = data_write_tree(tree, tmp_path / "d")
    summary = prepare_store(root, tmp_path / "s", size=SIZE, workers=1, max_pixels=2500, progress=False)
    assert [s["file"] for s in summary["skipped"]] == [f"train/{A}/big.JPEG"]  # 64x48 = 3072 pixels
    assert "over the limit of 2,500" in summary["skipped"][0]["reason"]

    tree[f"train/{B}/bad.JPEG"] = data_bad_files["truncated.JPEG"][0]
    root = data_write_tree(tree, tmp_path / "d2")
    with pytest.raises(DataError, match=f"no readable image for class.*{B}"):
        prepare_store(root, tmp_path / "s2", size=SIZE, workers=1, progress=False)
    assert not (tmp_path / "s2" / "meta.json").exists()


def test_native_size_keeps_pixels_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        resize_center_crop(decode_rgb(pixels), 32).numpy(), pixels.transpose(2, 0, 1)
    )


def test_source_by_name_rerun_and_changed_settings(tmp_path, monkeypatch, data_good_images):
    tree = {
        f"mini/train/{A}/a.JPEG": data_good_images["rgb"],
        f"mini/val/{A}/b.JPEG": data_good_images["cmyk"],
    }
    data_write_tree(tree, tmp_path / "mini.tar.gz", "tar.gz")
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path))
    first = prepare_store("mini", tmp_path / "s", size=SIZE, workers=1, progress=False)
    assert first["source"] == str(tmp_path / "mini.tar.gz")
    assert first["splits"] == {
        "train": {"images": 1, "classes": 1, "shards": 1},
        "val": first["splits"]["val"],
    }
    again = prepare_store("mini", tmp_path / "s", size=SIZE, workers=1, progress=False)
    assert again["images_prepared_now"] == 0 and again["splits"] == first["splits"]
    with pytest.raises(DataError, match="already holds a store"):
        prepare_store("mini", tmp_path / "s", size=64, progress=False)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nope.tar.gz"):
        prepare_store("nope", tmp_path / "s3", progress=False)


def _tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    source, out, encoding, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = [0]
    real_replace = os.replace
    def replace(src, dst):  # kill -9 the whole prepare just before this process's kill_at-th rename
        calls[0] += 1
        if calls[0] == kill_at:
            os.killpg(0, signal.SIGKILL)
        real_replace(src, dst)
    os.replace = replace
    from alexnet.data.prepare import prepare_store
    prepare_store(source, out, size=16, workers=2, shard_size=3, encoding=encoding, progress=False)
    """
)


@pytest.fixture(scope="module")
def data_resume_source(tmp_path_factory, data_good_images) -> Path:
    blobs = list(data_good_images.values())
    tree = {
        f"{split}/{c}/{i:02d}.JPEG": blobs[(i + j) % len(blobs)]
        for split, n in (("train", 9), ("val", 4))
        for j, c in enumerate((A, B))
        for i in range(n)
    }
    return data_write_tree(tree, tmp_path_factory.mktemp("resume") / "src")


@pytest.mark.slow
@pytest.mark.parametrize(("encoding", "kill_at"), [("raw", 2), ("raw", 5), ("raw", 8), ("jpeg", 4)])
def test_killed_prepare_resumes_to_an_identical_store(tmp_path, data_resume_source, encoding, kill_at):
    reference = tmp_path / "reference"
    prepare_store(data_resume_source, reference, size=16, workers=2, shard_size=3, encoding=encoding,
                  progress=False)  # fmt: skip
    out = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(data_resume_source), str(out), encoding, str(kill_at)],
        start_new_session=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr.decode()
    assert not (out / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        Store.open(out)
    resumed = prepare_store(data_resume_source, out, size=16, workers=2, shard_size=3, encoding=encoding,
                            progress=False)  # fmt: skip
    total = sum(s["images"] for s in resumed["splits"].values())
    assert resumed["images_prepared_now"] < total or kill_at == 2  # finished shards were not redone
    assert _tree_files(out) == _tree_files(reference)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.slow
def test_disk_full_during_prepare_is_clear_and_resumable(tmp_path, data_resume_source):
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "alexnet", "prepare", str(data_resume_source), "--out", str(out),
           "--size", "32", "--workers", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    assert proc.returncode != 0
    assert "disk full while writing" in proc.stderr and "shard-00000.npy" in proc.stderr
    visible = [p for p in out.rglob("*") if p.is_file()]
    assert [p.name for p in visible] == ["params.json"]  # no shard, no temporary, no meta
    summary = prepare_store(data_resume_source, out, size=32, workers=1, progress=False)
    assert summary["splits"]["train"]["images"] == 18 and Store.open(out).load_split("val").shape[0] == 8


@pytest.mark.slow
def test_cifar10_jpeg_end_to_end(tmp_path):
    archive = Path(os.environ.get("ALEXNET_DATA", "../shared/data")) / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not present")
    cmd = [sys.executable, "-m", "alexnet", "prepare", str(archive), "--out", str(tmp_path / "c"),
           "--size", "32", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    summary = json.loads(proc.stdout)
    assert summary["splits"]["train"] == {"images": 50000, "classes": 10, "shards": 49}
    assert summary["splits"]["test"]["images"] == 10000 and summary["skipped"] == []
    store = Store.open(tmp_path / "c")
    np.testing.assert_allclose(store.mean.mean(axis=(1, 2)) / 255, [0.491, 0.482, 0.447], atol=2e-3)


def _tiny_imagenet(root: Path, good: bytes) -> Path:
    """Tiny ImageNet's layout as distributed: train/<wnid>/images/*.JPEG plus <wnid>_boxes.txt, val/images
    labelled by val/val_annotations.txt, an unlabeled test/images, wnids.txt, words.txt, a .DS_Store."""
    wnids = ["n00001740", "n01443537", "n01629819"]  # the first is not an ILSVRC-2012 class
    tree = {
        "tiny-imagenet-200/wnids.txt": "\n".join(wnids).encode(),
        "tiny-imagenet-200/words.txt": b"n00001740\tentity\nn01443537\tgoldfish, Carassius auratus\n"
        b"n01629819\tEuropean fire salamander, Salamandra salamandra\nn99999999\tunused\n",
        "tiny-imagenet-200/.DS_Store": b"\x00\x00\x00\x01Bud1",
    }
    for w in wnids:
        tree[f"tiny-imagenet-200/train/{w}/{w}_boxes.txt"] = b"".join(
            f"{w}_{i}.JPEG\t0\t0\t10\t10\n".encode() for i in range(3)
        )
        for i in range(3):
            tree[f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG"] = good
    rows = []
    for i, w in enumerate([wnids[2], wnids[0], wnids[1], wnids[2]]):
        tree[f"tiny-imagenet-200/val/images/val_{i}.JPEG"] = good
        rows.append(f"val_{i}.JPEG\t{w}\t0\t0\t10\t10")
    tree["tiny-imagenet-200/val/val_annotations.txt"] = "\n".join(rows).encode()
    for i in range(5):
        tree[f"tiny-imagenet-200/test/images/test_{i}.JPEG"] = good
    return data_write_tree(tree, root)


def test_tiny_imagenet_layout_gives_the_labelled_classes_only_and_groups_the_side_files(
    tmp_path, data_good_images, capsys
):
    source = _tiny_imagenet(tmp_path / "src", data_good_images["rgb"]) / "tiny-imagenet-200"
    summary = prepare_store(source, tmp_path / "store", size=16, workers=1, progress=False)
    store = Store.open(tmp_path / "store")
    assert store.classes == ["n00001740", "n01443537", "n01629819"]  # not "images" from test/images
    assert store.class_names == ["entity", "goldfish", "fire salamander"]  # words.txt only where 1k lacks it
    assert store.splits == ["train", "val"]
    by_file = dict(zip(store.files("val"), store.labels("val").tolist(), strict=True))
    assert by_file == {"val/images/val_0.JPEG": 2, "val/images/val_1.JPEG": 0, "val/images/val_2.JPEG": 1,
                       "val/images/val_3.JPEG": 2}
    assert store.labels("train").tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert "unlabeled split" in reasons["test/images/"]
    boxes = [f for f, why in reasons.items() if f.endswith("_boxes.txt")]
    assert len(boxes) == 3 and all("not an image" in reasons[f] for f in boxes)
    text = format_prepare_summary(summary)
    assert text.count("_boxes.txt") == 3 and "      3  not an image" in text  # one line for the three
    err = capsys.readouterr().err
    assert err.count("skipped") <= 3 * len({s["reason"].split(":")[0] for s in summary["skipped"]}) + 1


def test_a_validation_class_absent_from_training_is_an_error_naming_it(tmp_path, data_good_images):
    rgb = data_good_images["rgb"]
    tree = {f"train/{A}/a.JPEG": rgb, f"val/{A}/b.JPEG": rgb, f"val/{B}/c.JPEG": rgb}
    source = data_write_tree(tree, tmp_path / "src")
    with pytest.raises(DataError, match=f"split 'val' .* class\\(es\\) the train split lacks: {B}"):
        prepare_store(source, tmp_path / "store", size=16, workers=1, progress=False)
