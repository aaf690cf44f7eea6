"""Plain helpers of the data-pipeline tests: what a stored image should hold, and trees of files written as a
folder or an archive. (Fixtures, in conftest.py, hold the shared test data themselves.)"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


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
