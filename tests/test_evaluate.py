"""Evaluation: centre and ten-crop, ensembles, per-class accuracy, predict — against hand computations."""

import csv
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.store import Store
from alexnet.evaluate import ensemble_probs, evaluate_checkpoints, predict_files
from alexnet.models.build import build_model, load_trained
from helpers_train import CLASSES, alexnet_cmd, make_store, save_trained, tiny_config

# More than five classes, so that top-5 is not every image's hit (with k = min(5, classes)).
SEVEN = (*CLASSES, "n03028079", "n03394916", "n03417042")
N_VAL = 4  # validation images per class
IMAGES = len(SEVEN) * N_VAL


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny store and two checkpoints of differently initialised 7-class nets."""
    tmp = tmp_path_factory.mktemp("eval")
    store_path = make_store(tmp, n_train=2, n_val=N_VAL, classes=SEVEN)
    store = Store.open(store_path)
    config = tiny_config(store_path, f"model.num_classes={len(SEVEN)}")
    paths, models = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(config.model).eval()  # as the checkpoint's config builds it (dropout 0.5 halves)
        path = tmp / f"model{seed}.pt"
        save_trained(path, model, config, store.classes, store.class_names, torch.from_numpy(store.mean))
        paths.append(path)
        models.append(model)
    return store_path, store, paths, models


def _by_hand(models, store, ten_crop):
    """Softmax averaged over crops and models, with plain slicing: (x - mean)[window] / 64."""
    x = store.load_split("val").float() - torch.from_numpy(store.mean)
    s, c = store.size, 32
    origins = [(0, 0), (0, s - c), (s - c, 0), (s - c, s - c), ((s - c) // 2, (s - c) // 2)]
    if not ten_crop:
        origins = origins[-1:]
    crops = [x[:, :, y : y + c, x0 : x0 + c] / 64.0 for y, x0 in origins]
    if ten_crop:
        crops += [t.flip(-1) for t in crops]
    with torch.no_grad():
        return sum(m(t).softmax(1) for m in models for t in crops) / (len(models) * len(crops))


def _errors(probs, labels):
    top5 = probs.topk(5, 1).indices
    top1 = (probs.argmax(1) != labels).float().mean().item()
    return top1, 1.0 - (top5 == labels[:, None]).any(1).float().mean().item()


@pytest.mark.parametrize("ten_crop", [False, True])
@pytest.mark.parametrize("ensemble", [False, True])
def test_errors_equal_a_hand_computation(setup, ten_crop, ensemble):
    store_path, store, paths, models = setup
    k = 2 if ensemble else 1
    result = evaluate_checkpoints(
        paths[:k], store_path, ten_crop=ten_crop, batch_size=5, device="cpu", progress=False
    )
    labels = torch.from_numpy(store.labels("val"))
    top1, top5 = _errors(_by_hand(models[:k], store, ten_crop), labels)
    assert result["images"] == IMAGES
    assert 0 < top5 < top1  # so the top-5 comparison can fail
    assert result["top1_error"] == pytest.approx(top1) and result["top5_error"] == pytest.approx(top5)


def test_ensemble_and_ten_crop_probabilities_equal_the_hand_average(setup):
    store_path, store, paths, models = setup
    loaded = [load_trained(p) for p in paths]
    batch = [(store.load_split("val"), torch.from_numpy(store.labels("val")))]
    probs, _ = ensemble_probs(loaded, batch, torch.device("cpu"), ten_crop=True)
    expected = _by_hand(models, store, ten_crop=True)
    assert torch.allclose(probs, expected, atol=1e-6)
    single = _by_hand(models[:1], store, ten_crop=True)
    assert not torch.allclose(single, expected, atol=1e-3)  # the ensemble really averages two nets


def test_per_class_csv(setup, tmp_path):
    store_path, store, paths, models = setup
    out = tmp_path / "per_class.csv"
    result = evaluate_checkpoints(paths[:1], store_path, per_class_csv=out, device="cpu", progress=False)
    rows = list(csv.DictReader(out.open()))
    assert [r["name"] for r in rows] == store.class_names and sum(int(r["images"]) for r in rows) == IMAGES
    pred = _by_hand(models[:1], store, ten_crop=False).argmax(1).numpy()
    labels = store.labels("val")
    for c, row in enumerate(rows):
        assert float(row["top1_accuracy"]) == pytest.approx(np.mean(pred[labels == c] == c))
    total = sum(float(r["top1_accuracy"]) * N_VAL for r in rows)
    assert 1 - total / IMAGES == pytest.approx(result["top1_error"])


@pytest.mark.slow
def test_predict_prints_names_and_probabilities(setup, tmp_path):
    store_path, store, paths, models = setup
    images = []
    for i, colour in enumerate([(200, 20, 20), (20, 200, 20)]):
        path = tmp_path / f"photo {i}.jpg"
        Image.new("RGB", (60, 45), colour).save(path)  # not square, not the stored size
        images.append(path)
    assert len(predict_files(paths[:1], images[:1], device="cpu")[0]["predictions"]) == 5  # top 5
    result = predict_files(paths[:1], images, top=len(SEVEN), device="cpu")
    probs = [p["probability"] for p in result[0]["predictions"]]
    assert (
        len(probs) == len(SEVEN)
        and probs == sorted(probs, reverse=True)
        and sum(probs) == pytest.approx(1.0, abs=1e-5)
    )
    assert {p["name"] for p in result[0]["predictions"]} == set(store.class_names)
    out = subprocess.run(
        alexnet_cmd("predict", str(paths[0]), *map(str, images), "--top", str(len(SEVEN))),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert all(
        f"{name} ({cls})" in out.stdout for name, cls in zip(store.class_names, store.classes, strict=True)
    )
    assert "tench" in out.stdout and out.stdout.count("%") == 2 * len(SEVEN)
