"""Decoding a store of JPEG shards where the batch goes: nvJPEG on the GPU against the CPU's workers.

    python benchmarks/gpu_decode.py STORE [--device cuda] [--batch 256] [--json]

STORE must be prepared with ``--encoding jpeg`` (benchmarks/gpu.sh prepares Imagenette that way). Prints,
for the train split: images/s of (1) one ``decode_jpeg(list, device=...)`` call per batch, (2) the
training batches as `fit` streams them with ``device_decode`` (bytes gathered by threads, decoded on the
device), (3) the CPU path (DataLoader worker processes decoding, then a copy to the device), and how far
the device's pixels are from the CPU decoder's (nvJPEG and libjpeg-turbo round differently). The target
of the performance issue: at least 20,000 images/s on one H200, so an ImageNet-sized store never starves it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from alexnet.data.loader import TrainBatches
from alexnet.data.store import Store


def _rate(batches, images: int, device: torch.device) -> float:
    start = time.perf_counter()
    for _ in batches:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="images of the train split to use")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    st = Store.open(args.store)
    if st.encoding != "jpeg":
        raise SystemExit(f"{args.store} holds raw pixels; prepare it with --encoding jpeg")
    images = st.images(st.train_split)
    n = min(args.limit or len(images), len(images))
    index_lists = [np.arange(a, min(a + args.batch, n)) for a in range(0, n, args.batch)]
    # (1) the decoder alone, bytes already in memory
    blobs = [images.blobs(idx) for idx in index_lists]
    decode_jpeg(blobs[0], mode=ImageReadMode.RGB, device=device)  # warm-up (nvJPEG handles, kernels)
    decoder = _rate((torch.stack(decode_jpeg(b, mode=ImageReadMode.RGB, device=device)) for b in blobs), n, device)
    # (2) and (3): the training batches, decoded on the device and in CPU worker processes
    labels = st.labels(st.train_split)[:n]
    workers = os.cpu_count() or 2
    common = dict(batch_size=args.batch, seed=0, device=device, workers=workers, drop_last=False)
    on_device = TrainBatches(_Head(images, n), labels, device_decode=True, **common)
    on_host = TrainBatches(_Head(images, n), labels, processes=True, **common)
    device_rate = _rate(on_device.epoch(0), n, device)
    host_rate = _rate(on_host.epoch(0), n, device)
    # how close nvJPEG's pixels are to the CPU decoder's
    idx = index_lists[0]
    dev_pixels = torch.stack(decode_jpeg(images.blobs(idx), mode=ImageReadMode.RGB, device=device)).cpu()
    diff = (dev_pixels.int() - torch.from_numpy(images[idx]).int()).abs()
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "images": n, "batch": args.batch, "cpu_workers": workers,
              "decoder_images_per_s": decoder, "device_decode_batches_images_per_s": device_rate,
              "cpu_worker_batches_images_per_s": host_rate, "max_abs_pixel_difference": int(diff.max()),
              "mean_abs_pixel_difference": float(diff.float().mean())}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40s} {value:,.1f}" if isinstance(value, float) else f"{key:40s} {value}")


class _Head:
    """The first n images of a split, keeping the store's `blobs` and `encoded` for device decoding."""

    def __init__(self, images, n: int) -> None:
        self.images, self.n, self.encoded = images, n, images.encoded

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx):
        return self.images[idx]

    def blobs(self, idx):
        return self.images.blobs(idx)


if __name__ == "__main__":
    main()
