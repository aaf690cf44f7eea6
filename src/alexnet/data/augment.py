"""Batched augmentation on uint8 tensors on the training device (paper Section 4.1).

Training: a random ``crop`` x ``crop`` window of each S x S stored image and, with probability
1/2, its horizontal reflection; PCA colour lighting, adding ``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T``
to every pixel with ``a_i ~ N(0, lighting_std)`` drawn once per image per presentation (on the
0..1 pixel scale, see :data:`LIGHTING_PIXEL_SCALE`); the
mean image, cut at the same window and reflected with the image, subtracted. Evaluation: the
centre window, or the ten crops of Section 4.1 in the order :data:`TEN_CROP_ORDER`.

All arithmetic is done once, in float32, fused into as few passes as possible:
``out = (x - mean_window) * scale + offset``, where ``offset`` folds the lighting, the
per-channel shift and the scale into one (3,) vector per image.

Randomness comes from a ``torch.Generator`` on the augmenter's device; :func:`alexnet.seeding.batch_generator`
derives one from (seed, epoch, batch index), so a resumed run redoes exactly the same batches.

Deviation from the paper, by config only: ``normalize="channel"`` uses torchvision's ImageNet
per-channel mean and standard deviation instead of the mean image; ``input_scale`` divides the
result (the paper uses 1.0, raw 0..255 minus the mean); ``lighting_std=0`` turns lighting off;
``random_crop=False`` trains on the centre window; ``flip=False`` never reflects.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from alexnet import native
from alexnet.config import AugmentConfig
from alexnet.threads import one_intraop_thread


@functools.cache
def fused_crop_unavailable() -> str | None:
    """Build (once per machine and source version) and load the fused training crop: None, or why it cannot
    run here (then the per-image tensor operations run, with the same numbers)."""
    return native.fused_pass("alexnet_augment", native.CSRC / "augment.cpp", "the fused training crop",
                             "per-image tensor operations (same numbers, slower)")


def fused_crop_available() -> bool:
    return fused_crop_unavailable() is None


# torchvision's ImageNet statistics on the 0..1 scale, used by normalize="channel".
CHANNEL_MEAN = (0.485, 0.456, 0.406)
CHANNEL_STD = (0.229, 0.224, 0.225)

# Index k of Augmenter.ten_crop's output dimension 1; entries 5..9 are 0..4 reflected.
TEN_CROP_ORDER = (
    "top-left",
    "top-right",
    "bottom-left",
    "bottom-right",
    "centre",
    "top-left flipped",
    "top-right flipped",
    "bottom-left flipped",
    "bottom-right flipped",
    "centre flipped",
)

# The paper's lighting formula is not scale-free: eigenvalues grow with the square of the pixel
# unit. Taken on the store's 0..255 scale (Imagenette: l1 = 14,430) it would add colour noise of
# standard deviation 0.1 * 14,430 = 1,443 to pixels of 0..255, erasing the image. On the 0..1
# scale (l1 = 0.22, like the ImageNet constants 0.2175, 0.0188, 0.0045 that common reimplementations
# use) it shifts colours by about 0.02, i.e. 5.7 of 255: the "intensity and color of the
# illumination" change the paper describes. So the offset in 0..255 units is P (a * l_255) / 255.
LIGHTING_PIXEL_SCALE = 255.0


def _as_float(value: object, device: torch.device, shape: tuple[int, ...], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    tensor = tensor.to(device=device, dtype=torch.float32)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {shape}")
    return tensor


def _windows(t: torch.Tensor, crop: int) -> torch.Tensor:
    """View (..., H, W) as (..., H-crop+1, W-crop+1, crop, crop): every crop window, no copy."""
    *lead, h, w = t.shape
    *lead_strides, sh, sw = t.stride()
    return t.as_strided((*lead, h - crop + 1, w - crop + 1, crop, crop), (*lead_strides, sh, sw, sh, sw))


class Augmenter:
    """Batched crops, reflections, PCA lighting and normalisation on one device.

    Args:
        cfg: the settings.
        mean: per-pixel mean image (3, S, S) on the 0..255 scale; needed for normalize="mean_image".
        eigvals: (3,) eigenvalues of the RGB covariance on the 0..255 scale (the store's); needed to
            train with lighting, which applies them on the 0..1 scale (:data:`LIGHTING_PIXEL_SCALE`).
        eigvecs: (3, 3) eigenvectors as columns, matching ``eigvals``.
        device: where batches live and the work is done.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        mean: torch.Tensor | np.ndarray | None = None,
        eigvals: torch.Tensor | np.ndarray | None = None,
        eigvecs: torch.Tensor | np.ndarray | None = None,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        fused: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.channels_last = channels_last
        # Training crops on the CPU in one C++ pass (csrc/augment.cpp, built at the first training batch;
        # None: where it builds), in the layout the network takes; the numbers of the per-image tensor
        # operations below.
        if fused and self.device.type != "cpu":
            raise ValueError(f"Augmenter(fused=True) crops on the CPU; this one is on {self.device}")
        self.fused = fused
        self._mean_pair: torch.Tensor | None = None
        if cfg.normalize == "mean_image":
            if mean is None:
                raise ValueError("normalize='mean_image' needs the store's mean image (store.mean)")
            m = torch.as_tensor(np.asarray(mean) if not isinstance(mean, torch.Tensor) else mean)
            if m.dim() != 3 or m.shape[0] != 3:
                raise ValueError(f"mean image has shape {tuple(m.shape)}; expected (3, S, S)")
            m = m.to(device=self.device, dtype=torch.float32)
            # The mean and its reflection, so a reflected window of the mean is a plain slice.
            self._mean_pair = torch.stack([m, m.flip(-1)])
        self._light: torch.Tensor | None = None
        if eigvals is not None and eigvecs is not None:
            vals = _as_float(eigvals, self.device, (3,), "eigvals")
            vecs = _as_float(eigvecs, self.device, (3, 3), "eigvecs")
            # RGB offset = vecs @ (alpha * vals) / 255 = alpha @ (vecs * vals / 255).T, a row per image.
            self._light = (vecs * (vals / LIGHTING_PIXEL_SCALE)[None, :]).T.contiguous()
        if cfg.normalize == "channel":
            std = torch.tensor(CHANNEL_STD, device=self.device)
            self._shift = 255.0 * torch.tensor(CHANNEL_MEAN, device=self.device)
            self._scale = (1.0 / (255.0 * std * cfg.input_scale)).view(3, 1, 1)
        else:
            self._shift = torch.zeros(3, device=self.device)
            self._scale = torch.full((3, 1, 1), 1.0 / cfg.input_scale, device=self.device)
        self._unit_scale = cfg.normalize != "channel" and cfg.input_scale == 1.0
        # Per-image slices keep each image's float work in cache on CPUs; one batched gather
        # avoids per-image kernel launches and host synchronisation on accelerators.
        self._crop = self._crop_loop if self.device.type == "cpu" else self._crop_batched

    def train(self, batch: torch.Tensor, generator: torch.Generator, index: torch.Tensor | None = None) -> torch.Tensor:
        """Random crop, reflection, lighting and normalisation: uint8 (B,3,S,S) -> float32 (B,3,c,c),
        channels-last in memory when the augmenter was made with ``channels_last``.

        With ``index`` (int64 (B,)), ``batch`` holds a whole split (N,3,S,S) and the batch is its images
        ``index``, gathered by the fused crop as it reads them (elsewhere copied out first; the same numbers).

        Draws, in this order from ``generator``: row offsets, column offsets (when random_crop),
        reflections (when flip), lighting coefficients (when lighting_std > 0).
        """
        if index is not None and not self._fused_crop():
            batch, index = batch.index_select(0, index.to(batch.device)), None
        _, h, w = self._check(batch)
        b = batch.shape[0] if index is None else index.shape[0]
        c = self.cfg.crop
        if generator.device.type != self.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the augmenter on {self.device}; "
                f"use batch_generator(..., device={str(self.device)!r})"
            )
        dev = self.device
        if self.cfg.random_crop:
            oy = torch.randint(0, h - c + 1, (b,), device=dev, generator=generator)
            ox = torch.randint(0, w - c + 1, (b,), device=dev, generator=generator)
        else:
            oy = torch.full((b,), (h - c) // 2, device=dev, dtype=torch.long)
            ox = torch.full((b,), (w - c) // 2, device=dev, dtype=torch.long)
        if self.cfg.flip:
            flip = torch.rand(b, device=dev, generator=generator) < 0.5
        else:
            flip = torch.zeros(b, device=dev, dtype=torch.bool)
        bias = -self._shift.expand(b, 3)
        if self.cfg.lighting_std > 0:
            if self._light is None:
                raise ValueError("lighting_std > 0 needs the store's eigvals and eigvecs (or lighting_std=0)")
            alpha = torch.randn(b, 3, device=dev, generator=generator) * self.cfg.lighting_std
            bias = bias + alpha @ self._light
        offset = bias.view(b, 3, 1, 1) * self._scale
        if self._fused_crop():
            mean = None if self._mean_pair is None else self._mean_pair[0]
            return torch.ops.alexnet_augment.crop_normalize(batch.contiguous(), index, mean, oy, ox, flip, offset,
                                                            self._scale, self._unit_scale, c, self.channels_last)
        out = torch.empty(b, 3, c, c, device=dev)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        self._crop(out, batch, oy, ox, flip, offset)
        return out

    def _fused_crop(self) -> bool:
        if self.device.type != "cpu" or self.fused is False:
            return False
        if self.fused and not fused_crop_available():
            raise RuntimeError(f"Augmenter(fused=True): the fused crop is not available: {fused_crop_unavailable()}")
        return fused_crop_available()

    def center(self, batch: torch.Tensor) -> torch.Tensor:
        """Centre window, normalised: uint8 (B,3,S,S) -> float32 (B,3,c,c)."""
        b, h, w = self._check(batch)
        c = self.cfg.crop
        out = torch.empty(b, 3, c, c, device=self.device)
        self._fixed_window(out, batch, (h - c) // 2, (w - c) // 2, False)
        return out

    def ten_crop(self, batch: torch.Tensor) -> torch.Tensor:
        """The ten test crops of Section 4.1: uint8 (B,3,S,S) -> float32 (B,10,3,c,c).

        Order along dimension 1 (:data:`TEN_CROP_ORDER`): top-left, top-right, bottom-left,
        bottom-right, centre, then the same five reflected horizontally.
        """
        b, h, w = self._check(batch)
        c = self.cfg.crop
        out = torch.empty(b, 10, 3, c, c, device=self.device)
        origins = ((0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2))
        for k, (y, x) in enumerate(origins):
            self._fixed_window(out[:, k], batch, y, x, False)
            self._fixed_window(out[:, k + 5], batch, y, x, True)
        return out

    def _fixed_window(self, out: torch.Tensor, batch: torch.Tensor, y: int, x: int, flip: bool) -> None:
        """Normalise window (y, x) of every image, reflected when ``flip``, without lighting, into ``out``."""
        b, dev = batch.shape[0], self.device
        offset = (-self._shift).view(1, 3, 1, 1).expand(b, 3, 1, 1) * self._scale
        oy, ox = torch.full((b,), y, device=dev), torch.full((b,), x, device=dev)
        self._crop(out, batch, oy, ox, torch.full((b,), flip, device=dev), offset)

    def _check(self, batch: torch.Tensor) -> tuple[int, int, int]:
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"batch must be uint8 (B,3,S,S); got {batch.dtype} {tuple(batch.shape)}")
        if batch.device.type != self.device.type:
            raise ValueError(f"batch is on {batch.device} but the augmenter on {self.device}; move it first")
        b, _, h, w = batch.shape
        c = self.cfg.crop
        if c > h or c > w:
            raise ValueError(
                f"crop {c} is larger than the stored image {h}x{w}; prepare larger or crop smaller"
            )
        if self._mean_pair is not None and tuple(self._mean_pair.shape[2:]) != (h, w):
            raise ValueError(
                f"mean image is {tuple(self._mean_pair.shape[2:])} but images are {(h, w)}; "
                "use the mean of the same store"
            )
        return b, h, w

    def _fill(
        self, out: torch.Tensor, pixels: torch.Tensor, mean: torch.Tensor | None, offset: torch.Tensor
    ) -> None:
        """``out = (pixels - mean) * scale + offset`` in float32, in two fused passes."""
        if mean is None:
            out.copy_(pixels)
        else:
            torch.sub(pixels, mean, out=out)
        if self._unit_scale:
            out.add_(offset)
        else:
            torch.addcmul(offset, out, self._scale, out=out)

    def _crop_loop(self, out: torch.Tensor, batch: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
                   flip: torch.Tensor, offset: torch.Tensor) -> None:
        """CPU: one image at a time into ``out``, so each image's float work stays in cache.

        Measured at batch 128, 256 -> 224 on the 2-core machine (jemalloc): 9,000-19,000 img/s idle,
        against 7,000-8,000 for the batched gather below and 2,800 for ``torch.gather`` index maps.
        The loop runs with one intra-op thread: each per-image op is too small to amortise an
        OpenMP barrier, and with other processes on the cores a two-thread loop fell to 900-2,000
        img/s while one thread held 5,500-8,000. The previous thread count is restored afterwards
        (process-wide, so do not run the model in another thread meanwhile).
        """
        c = self.cfg.crop
        w = batch.shape[-1]
        draws = zip(oy.tolist(), ox.tolist(), flip.tolist(), strict=True)
        with one_intraop_thread():
            for i, (y, x, f) in enumerate(draws):
                pixels = batch[i, :, y : y + c, x : x + c]
                mean = None
                if f:
                    pixels = pixels.flip(-1)
                    if self._mean_pair is not None:
                        mean = self._mean_pair[1, :, y : y + c, w - x - c : w - x]
                elif self._mean_pair is not None:
                    mean = self._mean_pair[0, :, y : y + c, x : x + c]
                self._fill(out[i], pixels, mean, offset[i])

    def _crop_batched(self, out: torch.Tensor, batch: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
                      flip: torch.Tensor, offset: torch.Tensor) -> None:
        """Accelerators: one gather from the strided window view, no per-image launches or host sync."""
        c = self.cfg.crop
        b, _, _, w = batch.shape
        rows = torch.arange(b, device=batch.device)
        pixels = _windows(batch, c)[rows, :, oy, ox]  # (B, 3, c, c)
        pixels = torch.where(flip.view(b, 1, 1, 1), pixels.flip(-1), pixels)
        mean = None
        if self._mean_pair is not None:
            mean_ox = torch.where(flip, w - ox - c, ox)
            mean = _windows(self._mean_pair, c)[flip.long(), :, oy, mean_ox]
        self._fill(out, pixels, mean, offset)
