"""Augmentation (Section 4.1) against explicit slicing, on synthetic uint8 batches."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from alexnet.config import AugmentConfig
from alexnet.data.augment import LIGHTING_PIXEL_SCALE, TEN_CROP_ORDER, Augmenter
from alexnet.seeding import batch_generator

S, C, B = 20, 14, 32
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=g)
    mean = torch.rand(3, S, S, generator=g) * 255
    return images, mean


def _eigen() -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct eigenvalues on the 0..255 scale, about Imagenette's, and a non-symmetric orthogonal
    basis, so swapping rows for columns shows."""
    vecs, _ = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    )
    return torch.tensor([14000.0, 1200.0, 230.0], dtype=torch.float64), vecs


def _augmenter(path: str, cfg: AugmentConfig, device: str = "cpu", **kwargs) -> Augmenter:
    """An augmenter whose training crops take `path`: "fused" (the C++ pass), "loop" or "batched"."""
    aug = Augmenter(cfg, device=device, fused=path == "fused", **kwargs)
    if path != "fused":
        aug._crop = getattr(aug, f"_crop_{path}")
    return aug


@pytest.mark.parametrize(("device", "path"), [(d, p) for d in DEVICES for p in ("fused", "loop", "batched")
                                              if d == "cpu" or p != "fused"])
def test_random_crop_and_flip_match_explicit_slicing(device: str, path: str) -> None:
    images, mean = _data()
    aug = _augmenter(path, AugmentConfig(crop=C, lighting_std=0.0), device, mean=mean)
    out = aug.train(images.to(device), batch_generator(3, 1, 4, device)).cpu()

    # Replay the documented draw order: rows, columns, reflections.
    g = batch_generator(3, 1, 4, device)
    oy = torch.randint(0, S - C + 1, (B,), device=device, generator=g).tolist()
    ox = torch.randint(0, S - C + 1, (B,), device=device, generator=g).tolist()
    flips = (torch.rand(B, device=device, generator=g) < 0.5).tolist()
    assert len(set(zip(oy, ox, strict=True))) > B // 2 and 0 < sum(flips) < B  # the draws vary
    for i, (y, x, f) in enumerate(zip(oy, ox, flips, strict=True)):
        want = images[i, :, y : y + C, x : x + C].float() - mean[:, y : y + C, x : x + C]
        if f:
            want = want.flip(-1)
        torch.testing.assert_close(out[i], want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("path", ["fused", "loop", "batched"])
def test_mean_is_cut_at_the_crop_window_and_flipped_with_it(path: str) -> None:
    images, _ = _data()
    # An image equal to the mean leaves exactly zero only if the mean window follows the crop and flip.
    aug = _augmenter(path, AugmentConfig(crop=C, lighting_std=0.0), mean=images[0].float())
    same = images[0].expand(B, 3, S, S).contiguous()
    for batch_idx in range(4):
        out = aug.train(same, batch_generator(0, 0, batch_idx))
        assert out.abs().max().item() == 0.0


def test_ten_crop_order_and_values() -> None:
    images, mean = _data(1)
    aug = Augmenter(AugmentConfig(crop=C, input_scale=4.0), mean=mean)
    out = aug.ten_crop(images)
    assert out.shape == (B, 10, 3, C, C) and len(TEN_CROP_ORDER) == 10
    m = S - C
    origins = [(0, 0), (0, m), (m, 0), (m, m), (m // 2, m // 2)]
    for k, (y, x) in enumerate(origins):
        want = (images[:, :, y : y + C, x : x + C].float() - mean[:, y : y + C, x : x + C]) / 4.0
        torch.testing.assert_close(out[:, k], want, rtol=0, atol=1e-5)
        torch.testing.assert_close(out[:, k + 5], want.flip(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(aug.center(images), out[:, 4], rtol=0, atol=0)


def test_lighting_covariance_matches_the_eigen_decomposition() -> None:
    """Offsets over n draws have covariance sum_i (std l_i)^2 p_i p_i^T, l_i on the 0..1 pixel scale.

    Each entry of a sample covariance of n Gaussian draws has standard error
    sqrt((S_jj S_kk + S_jk^2) / n); five of them bound the deviation (a fixed seed makes it exact
    and repeatable; a wrong transpose or sqrt(l) is off by tens of standard errors).
    """
    vals, vecs = _eigen()
    std, n = 0.1, 40_000
    aug = Augmenter(AugmentConfig(crop=2, normalize="none", lighting_std=std), eigvals=vals, eigvecs=vecs)
    out = aug.train(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), batch_generator(0, 0, 0)).double()
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))  # one offset per image, every pixel
    offsets = out[:, :, 0, 0]
    unit_vals = vals / LIGHTING_PIXEL_SCALE**2  # eigenvalues on the 0..1 scale
    want = LIGHTING_PIXEL_SCALE**2 * vecs @ torch.diag((std * unit_vals) ** 2) @ vecs.T  # back in 0..255
    assert 5.0 < want.trace().sqrt() < 6.0  # a subtle shift of a few levels out of 255, not noise
    got = torch.cov(offsets.T)
    se = ((torch.diag(want)[:, None] * torch.diag(want)[None, :] + want**2) / n).sqrt()
    assert ((got - want).abs() <= 5 * se).all(), (got, want)
    assert (offsets.mean(0).abs() <= 5 * torch.diag(want).sqrt() / n**0.5).all()


def test_lighting_is_added_before_mean_subtraction_on_the_pixel_scale() -> None:
    images, mean = _data(2)
    vals, vecs = _eigen()
    cfg = AugmentConfig(crop=C, random_crop=False, flip=False, input_scale=8.0)
    lit = Augmenter(cfg, mean=mean, eigvals=vals, eigvecs=vecs).train(images, batch_generator(5, 0, 0))
    alpha = torch.randn(B, 3, generator=batch_generator(5, 0, 0)) * 0.1  # no crop or flip draws
    offsets = (alpha.double() * vals / LIGHTING_PIXEL_SCALE) @ vecs.T
    m = (S - C) // 2
    base = images[:, :, m : m + C, m : m + C].float() - mean[:, m : m + C, m : m + C]
    want = (base + offsets.float()[:, :, None, None]) / 8.0
    torch.testing.assert_close(lit, want, rtol=0, atol=1e-4)


def test_channel_normalisation_matches_torchvision() -> None:
    images, _ = _data(3)
    aug = Augmenter(AugmentConfig(crop=C, lighting_std=0.0, normalize="channel"))
    want = TF.normalize(
        TF.center_crop(images, [C, C]).float() / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(aug.center(images), want, rtol=1e-5, atol=1e-5)


def test_seeded_batches_are_deterministic_and_differ_by_batch() -> None:
    images, mean = _data(4)
    vals, vecs = _eigen()
    aug = Augmenter(AugmentConfig(crop=C), mean=mean, eigvals=vals, eigvecs=vecs)
    threads = torch.get_num_threads()
    first = aug.train(images, batch_generator(11, 2, 5))
    assert torch.get_num_threads() == threads  # the CPU loop's one-thread section is undone
    assert torch.equal(first, aug.train(images, batch_generator(11, 2, 5)))
    for other in (batch_generator(11, 2, 6), batch_generator(11, 3, 5), batch_generator(12, 2, 5)):
        assert not torch.equal(first, aug.train(images, other))
    assert not torch.equal(first, aug.train(images, batch_generator(11, 2, 5, rank=1)))


def test_wrong_inputs_name_the_problem() -> None:
    images, mean = _data()
    with pytest.raises(ValueError, match="crop 24 is larger than the stored image 20x20"):
        Augmenter(AugmentConfig(crop=24), mean=mean).center(images)
    with pytest.raises(ValueError, match="uint8"):
        Augmenter(AugmentConfig(crop=C), mean=mean).center(images.float())
    with pytest.raises(ValueError, match="needs the store's mean image"):
        Augmenter(AugmentConfig())
    with pytest.raises(ValueError, match="eigvals and eigvecs"):
        Augmenter(AugmentConfig(crop=C, normalize="none")).train(images, batch_generator(0, 0, 0))


@pytest.mark.parametrize("cfg", [
    AugmentConfig(crop=C, lighting_std=0.1, input_scale=64.0),
    AugmentConfig(crop=C, lighting_std=0.1, input_scale=3.0),  # the product inexact: the FMA shows
    AugmentConfig(crop=C, lighting_std=0.0),  # unit scale: the sum without the product
    AugmentConfig(crop=C, lighting_std=0.1, normalize="channel"),  # no mean image
    AugmentConfig(crop=C, random_crop=False, flip=False, lighting_std=0.1, input_scale=3.0),
    AugmentConfig(crop=S, lighting_std=0.1, input_scale=64.0),  # the whole image
], ids=["lighting-scaled", "lighting-inexact-scale", "unit-scale", "channel", "centre-no-flip", "whole-image"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_crop_gives_the_batches_of_the_tensor_operations(cfg: AugmentConfig, channels_last: bool) -> None:
    """The C++ pass against the per-image tensor operations: identical values, the layout asked for."""
    from alexnet.data.augment import fused_crop_available

    assert fused_crop_available(), "the fused crop must build in the test environment (gcc + ninja)"
    images, mean = _data(1)
    vals, vecs = _eigen()
    outs = {}
    for path in ("fused", "loop"):
        aug = _augmenter(path, cfg, mean=mean, eigvals=vals, eigvecs=vecs, channels_last=channels_last)
        outs[path] = aug.train(images, batch_generator(5, 2, 7))
    assert torch.equal(outs["fused"], outs["loop"])
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert outs["fused"].is_contiguous(memory_format=layout) and outs["loop"].is_contiguous(memory_format=layout)


def test_fused_crop_names_a_window_outside_the_image() -> None:
    from alexnet.data.augment import fused_crop_available

    assert fused_crop_available()
    images, mean = _data()
    b = images.shape[0]
    oy, ox = torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)
    ox[3] = S - C + 1
    with pytest.raises(RuntimeError, match=r"window \(0, 7\) of image 3 leaves the 20x20 image"):
        torch.ops.alexnet_augment.crop_normalize(images, None, mean, oy, ox, torch.zeros(b, dtype=torch.bool),
                                                 torch.zeros(b, 3), torch.ones(3), True, C, False)
    with pytest.raises(RuntimeError, match=rf"index\[1\] = {b} is outside the {b} images held"):
        torch.ops.alexnet_augment.crop_normalize(images, torch.tensor([0, b]), mean, oy[:2], oy[:2],
                                                 torch.zeros(2, dtype=torch.bool), torch.zeros(2, 3), torch.ones(3),
                                                 True, C, False)


@pytest.mark.parametrize("path", ["fused", "loop"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_split_gathered_by_the_crop_gives_the_batch_copied_out_first(path: str, channels_last: bool) -> None:
    """Augmenter.train(split, gen, index=...) equals the crop of split[index] (the fused pass reads the split
    itself; the tensor path copies the batch out), repeated and unsorted indices included."""
    images, mean = _data()
    vals, vecs = _eigen()
    cfg = AugmentConfig(crop=C, lighting_std=0.1, input_scale=3.0)
    aug = _augmenter(path, cfg, mean=mean, eigvals=vals, eigvecs=vecs, channels_last=channels_last)
    index = torch.tensor([5, 0, 7, 5, 2])
    gathered = aug.train(images, batch_generator(1, 0, 3), index=index)
    copied = aug.train(images[index], batch_generator(1, 0, 3))
    assert gathered.shape == (5, 3, C, C) and torch.equal(gathered, copied)
