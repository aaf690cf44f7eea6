"""Shared fixtures. Data-pipeline fixtures are named data_*: small images in every mode and bad inputs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth random RGB image (JPEG-friendly), HWC uint8."""
    rng = np.random.default_rng(seed)
    small = (rng.random((max(h // 8, 2), max(w // 8, 2), 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def data_good_images() -> dict[str, bytes]:
    """Valid images in every mode a loader meets in ImageNet and elsewhere, keyed by a short kind name."""
    rgb = Image.fromarray(_photo(0, 48, 64))
    palette = Image.fromarray(_photo(5, 40, 40)).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    grey16 = Image.fromarray(_photo(6, 30, 50)[:, :, 0].astype(np.uint16) * 257)
    return {
        "rgb": _encode(rgb, "JPEG", quality=90),
        "grey": _encode(Image.fromarray(_photo(1, 50, 40)).convert("L"), "JPEG"),
        "cmyk": _encode(Image.fromarray(_photo(2, 36, 60)).convert("CMYK"), "JPEG"),
        "png_named_jpeg": _encode(Image.fromarray(_photo(3, 45, 45)), "PNG"),
        "rgba": _encode(Image.fromarray(_photo(4, 40, 52)).convert("RGBA"), "PNG"),
        "palette": _encode(palette, "PNG"),
        "png16": _encode(grey16, "PNG"),
        "tall": _encode(Image.fromarray(_photo(7, 90, 33)), "JPEG", quality=95),
    }


@pytest.fixture(scope="session")
def data_bad_files(data_good_images: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    """Files that are not usable images: (bytes, a word the skip reason must contain)."""
    rgb = data_good_images["rgb"]
    return {
        "empty.JPEG": (b"", "empty"),
        "truncated.JPEG": (rgb[: len(rgb) // 2], "corrupt"),
        "random.JPEG": (np.random.default_rng(9).bytes(3000), "not an image"),
        "notes.txt": (b"this is a text file, not a picture\n", "not an image"),
        "bomb.png": (_png_bomb(100_000, 100_000), "bomb"),
    }


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven over DevTools (tests/test_report.py's Browser); skips without one on PATH."""
    import shutil

    from test_report import CHROMIUM_NAMES, Browser

    binary = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if binary is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
                    "`make test` installs Debian's chromium where it can (root or sudo, apt-get)")
    b = Browser(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()
