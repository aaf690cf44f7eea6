"""Shared fixtures. Data-pipeline fixtures are named data_*: small images in every mode and bad inputs."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

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


def data_reference(data: bytes, size: int) -> np.ndarray:
    """The expected stored pixels by Pillow alone: RGB, shorter side to size (bilinear), centre crop."""
    im = Image.open(io.BytesIO(data))
    if im.mode == "I;16":
        im = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA")
    im = im.convert("RGB")
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w < h else (int(size * w / h), size)
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    return np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


@pytest.fixture(name="data_reference", scope="session")
def data_reference_fixture():
    return data_reference


def data_write_tree(tree: dict[str, bytes], dest: Path, kind: str = "folder") -> Path:
    """Write {relative path: bytes} as a folder, or as a .tar / .tar.gz / .zip archive at `dest`."""
    if kind == "folder":
        for rel, data in tree.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
        return dest
    if kind == "zip":
        with zipfile.ZipFile(dest, "w") as zf:
            for rel, data in tree.items():
                zf.writestr(rel, data)
        return dest
    with tarfile.open(dest, "w:gz" if kind == "tar.gz" else "w") as tf:
        for rel, data in tree.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest


@pytest.fixture(name="data_write_tree", scope="session")
def data_write_tree_fixture():
    return data_write_tree
