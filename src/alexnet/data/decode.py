"""Image bytes in any format and mode to uint8 RGB tensors, and the paper's shorter-side-256 crop.

Section 2: "we down-sampled the images to a fixed resolution of 256 x 256. Given a rectangular image,
we first rescaled the image such that the shorter side was of length 256, and then cropped out the
central 256 x 256 patch". Preparing a store and predicting on a photo both go through here, so a photo
given to `predict` sees exactly the pixels a stored image would.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from alexnet.errors import BadImage

DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own decompression-bomb limit

# What a data source yields for one image: encoded bytes, or decoded HWC uint8 RGB (CIFAR batches).
Payload = bytes | np.ndarray


@contextlib.contextmanager
def quiet_torchvision_io() -> Iterator[None]:
    """Silence torchvision 0.29's per-call deprecation notice on decode_jpeg/encode_jpeg."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The image decoding and encoding capabilities of TorchVision"
        )
        yield


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to HWC uint8 RGB; 16-bit greyscale is scaled, not clipped."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = (np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        grey = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def decode_rgb(data: Payload, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode image bytes in any format and mode to a uint8 RGB tensor (3, H, W).

    JPEGs in RGB or greyscale take torchvision's decoder; every other format and mode (CMYK, RGBA, palette,
    16-bit, a PNG named .JPEG) goes through Pillow. Raises BadImage with the reason for anything else.
    """
    if isinstance(data, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1)))
    if len(data) == 0:
        raise BadImage("empty file")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except Exception as e:
        raise BadImage(f"unreadable image header: {e}") from None
    width, height = im.size
    if width * height > max_pixels:
        raise BadImage(
            f"declares {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            f"(a decompression-bomb guard; raise --max-pixels to keep it)"
        )
    if width == 0 or height == 0:
        raise BadImage(f"declares an empty {width}x{height} image")
    if im.format == "JPEG" and im.mode in ("RGB", "L"):
        try:
            with quiet_torchvision_io():
                return decode_jpeg(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
                )
        except RuntimeError as e:
            raise BadImage(f"corrupt JPEG: {str(e).rsplit(', ', 1)[-1]}") from None
    try:
        im.load()
        rgb = _pil_to_rgb(im)
    except Exception as e:
        raise BadImage(f"corrupt {im.format} image: {e}") from None
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Scale the shorter side to `size` (antialiased bilinear) and crop the central size x size square."""
    _, h, w = image.shape
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    if (new_h, new_w) != (h, w):
        image = F.resize(image, [new_h, new_w], antialias=True)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image[:, top : top + size, left : left + size]


def load_images(paths: Sequence[str | os.PathLike], size: int) -> torch.Tensor:
    """Image files in any format and mode -> uint8 (N, 3, size, size), as a store holds them."""
    out = []
    for p in paths:
        try:
            data = Path(p).read_bytes()
            out.append(resize_center_crop(decode_rgb(data), size))
        except (OSError, BadImage) as e:
            raise BadImage(f"cannot read image {p}: {e}") from None
    return torch.stack(out)
