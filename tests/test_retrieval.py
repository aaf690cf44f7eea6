"""What the network learned, Figure 4 and Section 6.1: fc7 features, Euclidean and Hamming search, the
auto-encoder codes, the predictions figure, and the commands on a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.analysis.codes import hamming_nearest, pack_bits, random_hyperplane_codes, train_autoencoder, unpack_bits
from alexnet.analysis.features import compute_features, open_features
from alexnet.analysis.retrieval import chance_precision, nearest, precision_at_k
from alexnet.cli import main
from alexnet.data.store import Store
from alexnet.models.build import load_trained
from alexnet.train import fit
from helpers_train import make_store, tiny_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A cifar_relu run of one epoch on a 4-class store: (run folder, checkpoint, store)."""
    tmp = tmp_path_factory.mktemp("analysis")
    store = make_store(tmp, n_train=12, n_val=3)
    fit(tiny_config(store, "run.epochs=1"), tmp / "run", progress=False)
    return tmp / "run", tmp / "run" / "checkpoints" / "latest.pt", store


def test_features_equal_the_fc7_activations_inside_the_forward_pass(trained_run, tmp_path):
    _, ckpt, store = trained_run
    found = compute_features(ckpt, store, "train", out=tmp_path / "f.npy", progress=False, batch_size=5)
    st = Store.open(store)
    assert isinstance(found.vectors, np.memmap) and found.vectors.dtype == np.float16
    assert found.files == st.files("train") and np.array_equal(found.labels, st.labels("train"))
    # the same vectors, taken by a hook on the last hidden layer (cifar_relu: the pooled conv3 maps; the
    # paper's net: fc7 after ReLU) during an ordinary forward pass
    trained = load_trained(ckpt)
    seen = []
    hook = trained.model.conv3.register_forward_hook(lambda m, i, o: seen.append(o.detach().flatten(1)))
    images = st.load_split("train")
    with torch.no_grad():
        trained.model(trained.augmenter("cpu").center(images))
    hook.remove()
    expected = seen[0].numpy().astype(np.float16)
    assert expected.shape == found.vectors.shape and (expected > 0).any()
    np.testing.assert_array_equal(np.asarray(found.vectors), expected)


def test_features_are_reused_until_the_checkpoint_changes_and_never_look_complete_half_written(
    trained_run, tmp_path, monkeypatch
):
    _, ckpt, store = trained_run
    out = tmp_path / "f.npy"
    assert not compute_features(ckpt, store, "val", out=out, progress=False).reused
    assert compute_features(ckpt, store, "val", out=out, progress=False).reused
    assert not compute_features(ckpt, store, "val", out=out, precision="bf16", progress=False).reused
    changed = tmp_path / "changed.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"]["conv3.0.bias"] += 1.0
    torch.save(state, changed)
    assert not compute_features(changed, store, "val", out=out, progress=False).reused
    # a crash midway leaves the previous complete pair, or nothing, never a file that passes for complete
    import alexnet.analysis.features as features

    def crash(*args, **kwargs):
        raise OSError("disk full")

    out2 = tmp_path / "g.npy"
    monkeypatch.setattr(features, "fc7", crash)
    with pytest.raises(OSError, match="disk full"):
        compute_features(ckpt, store, "val", out=out2, progress=False)
    assert not out2.exists() and not out2.with_suffix(".json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(FileNotFoundError, match="alexnet features"):
        open_features(out2)


def test_euclidean_search_agrees_with_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    index = rng.normal(size=(1000, 24)).astype(np.float16)
    queries = rng.normal(size=(37, 24)).astype(np.float32)
    dist, idx = nearest(index, queries, 7, chunk=128)  # several chunks, merged
    full = np.linalg.norm(queries[:, None, :] - index.astype(np.float64)[None], axis=2)
    want = np.argsort(full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), rtol=1e-4, atol=1e-4)


def test_hamming_search_agrees_with_brute_force_and_orders_ties_by_index():
    rng = np.random.default_rng(1)
    for bits in (8, 32, 64, 256):
        codes = rng.integers(0, 2, size=(500, bits)).astype(bool)
        queries = rng.integers(0, 2, size=(40, bits)).astype(bool)
        dist, idx = hamming_nearest(pack_bits(codes), pack_bits(queries), 9, chunk=16)
        full = (queries[:, None, :] != codes[None]).sum(2)
        want = np.argsort(full, axis=1, kind="stable")[:, :9]  # equal distances: lower index first
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(dist, np.take_along_axis(full, want, 1))


def test_bit_packing_round_trips():
    rng = np.random.default_rng(2)
    for bits in (1, 7, 32, 100, 256):
        b = rng.integers(0, 2, size=(13, bits)).astype(bool)
        packed = pack_bits(b)
        assert packed.dtype == np.uint8 and packed.shape == (13, -(-bits // 8))
        np.testing.assert_array_equal(unpack_bits(packed, bits), b)


def test_precision_counts_the_share_of_neighbours_of_the_querys_class():
    found = np.array([[0, 0, 1], [2, 1, 1]])
    assert precision_at_k(found, np.array([0, 1])) == pytest.approx(4 / 6)
    assert chance_precision(np.array([0, 0, 0, 1]), np.array([0, 1])) == pytest.approx((0.75 + 0.25) / 2)


def test_codes_of_clustered_vectors_find_their_cluster():
    # Two well-separated clusters: both the auto-encoder's codes and random hyperplanes must retrieve
    # same-cluster neighbours far above the 50 % of chance.
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(2, 64)) * 4
    labels = rng.integers(0, 2, 600)
    vectors = np.maximum(centres[labels] + rng.normal(size=(600, 64)), 0).astype(np.float16)
    model, losses = train_autoencoder(vectors[:500], 16, epochs=5, progress=False)
    assert np.isfinite(losses).all()
    from alexnet.analysis.codes import encode

    _, idx = hamming_nearest(encode(model, vectors[:500]), encode(model, vectors[500:]), 5)
    assert precision_at_k(labels[:500][idx], labels[500:]) > 0.9
    db, qs = random_hyperplane_codes(vectors[:500], vectors[500:], 16)
    _, idx = hamming_nearest(db, qs, 5)
    assert precision_at_k(labels[:500][idx], labels[500:]) > 0.9


def _run(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_analysis_commands_on_a_trained_run_and_its_report(trained_run, capsys):
    run, ckpt, store = trained_run
    analysis = run / "analysis"
    found = _run(capsys, "features", str(ckpt), "--data", str(store))
    assert found["shape"] == [48, 1024] and Path(found["path"]).parent == analysis
    got = _run(capsys, "retrieve", str(ckpt), "--data", str(store), "--query", "0", "--query", "5", "--k", "3")
    assert [q["query"] for q in got["queries"]] == ["val[0]", "val[5]"]
    assert all(len(q["neighbours"]) == 3 for q in got["queries"])
    assert all(q["neighbours"][0]["distance"] <= q["neighbours"][-1]["distance"] for q in got["queries"])
    evaluated = _run(capsys, "retrieve", str(ckpt), "--data", str(store), "--eval", "--k", "3")
    assert [r["representation"] for r in evaluated["rows"]] == ["fc7", "pixels 32x32"]
    assert evaluated["queries"] == 12 and 0.0 <= evaluated["rows"][0]["precision_at_3"] <= 1.0
    trained_codes = _run(capsys, "codes", "train", str(ckpt), "--data", str(store), "--bits", "8", "16",
                         "--epochs", "2")
    assert [m["bits"] for m in trained_codes["models"]] == [8, 16]
    measured = _run(capsys, "codes", "eval", str(ckpt), "--data", str(store), "--bits", "8", "16", "--k", "3")
    assert [r["bytes_per_image"] for r in measured["rows"]] == [1, 1, 2, 2, 2048, 3072]
    image = run.parent / "images" / "val" / "n02102040" / "0000.png"  # its folder names its class
    predicted = _run(capsys, "predict", str(ckpt), str(image), "--figure", str(analysis / "predictions.png"))
    assert predicted[0]["image"] == str(image)
    for name in ("kernels", "predictions", "retrieval", "retrieval_eval", "codes"):
        if name == "kernels":
            _run(capsys, "kernels", str(ckpt))
        section = json.loads((analysis / f"{name}.json").read_text())
        assert section["title"] and section["summary"], name
        if "image" in section:
            with Image.open(analysis / section["image"]) as im:
                assert im.format == "PNG" and im.width > 100, name
    assert json.loads((analysis / "predictions.json").read_text())["with_true_class"] == 1
    report = _run(capsys, "report", str(run))
    html = Path(report["path"]).read_text()
    for title in ("First-layer kernels", "Top-5 predictions", "Nearest training images", "Retrieval precision",
                  "Binary codes"):
        assert title in html


def test_the_demo_ends_with_its_figures_and_report(tmp_path, monkeypatch, capsys):
    import alexnet.demo
    from alexnet.demo import run_demo

    store = make_store(tmp_path, n_train=6, n_val=2)
    (tmp_path / "cache" / "stores").mkdir(parents=True)
    store.rename(tmp_path / "cache" / "stores" / "imagenette")
    store = tmp_path / "cache" / "stores" / "imagenette"
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    # the demo's own recipe trains the paper's net for minutes: the tiny net stands in for it
    monkeypatch.setattr(alexnet.demo, "fit",
                        lambda config, run_dir: fit(tiny_config(store, "run.epochs=1"), run_dir, progress=False))
    run = tmp_path / "run"
    assert run_demo(str(run), as_json=True) == 0
    result = json.loads(capsys.readouterr().out)  # with --json stdout holds only the summary (the log: stderr)
    assert Path(result["report"]) == run / "report.html"
    for name in ("demo.json", "report.html", "analysis/kernels.png", "analysis/kernels.json",
                 "analysis/predictions.png", "analysis/predictions.json"):
        assert (run / name).is_file(), name
    html = (run / "report.html").read_text()
    assert "First-layer kernels" in html and "Top-5 predictions" in html and "Demo results" in html


def test_fc7_of_the_paper_net_is_its_last_hidden_layer_after_relu():
    from alexnet.analysis.features import fc7
    from alexnet.config import load_config
    from alexnet.models import create_model
    from alexnet.models.build import TrainedNetwork

    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=10, init="kaiming").eval()
    config = load_config("demo").with_num_classes(10, "test")
    trained = TrainedNetwork(model, config, [str(i) for i in range(10)], [str(i) for i in range(10)],
                      torch.full((3, 256, 256), 110.0), Path("x.pt"))
    seen = []
    hook = model.act7.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    with torch.no_grad():
        model(trained.augmenter("cpu").center(images))
    hook.remove()
    got = fc7(trained, images)
    assert got.shape == (2, 4096) and (got >= 0).all() and (got > 0).any()
    torch.testing.assert_close(got, seen[0], rtol=0, atol=0)
