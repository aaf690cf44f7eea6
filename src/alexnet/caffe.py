"""`alexnet import-caffe`: Caffe's ``bvlc_alexnet.caffemodel`` as our network, written as `alexnet export` writes.

Caffe's bvlc_alexnet is the only public ImageNet-trained network with the paper's shape: conv2, conv4 and
conv5 in two groups, LRN after conv1 and conv2, the paper's widths, 60,965,224 parameters. `import_caffe`
reads its weights into the registered model ``alexnet_caffe`` and writes a safetensors file with the
config, classes and mean image (``NAME.mean.npy``) that `alexnet.models.build.load_trained` reads, so
predict, kernels, features and retrieval run on it.

Where the files come from:

* ``bvlc_alexnet.caffemodel``, about 233 MB (sha1 9116a64c0fbe4459d18f4bb6b56d647b63920377): the Caffe model
  zoo, ``models/bvlc_alexnet`` in the BVLC/caffe repository, downloaded from
  http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel.
* ``synset_words.txt`` (fc8's 1000 wnids and names, one ``n01440764 tench, Tinca tinca`` per line) and the
  mean image ``imagenet_mean.binaryproto``: Caffe's ILSVRC-2012 auxiliary files, fetched by
  ``data/ilsvrc12/get_ilsvrc_aux.sh`` (http://dl.caffe.berkeleyvision.org/caffe_ilsvrc12.tar.gz). The same
  mean ships as ``python/caffe/imagenet/ilsvrc_2012_mean.npy``; either file is read.

Where Caffe's network differs from the paper's (and what ``alexnet_caffe`` does):

* Input 227x227, conv1 unpadded (Caffe's ``crop_size: 227``); the paper's net here takes 224, padded by 2.
* Caffe's LRN is x / (k + alpha/n * sum x^2)^beta with k = 1 and n = 5, alpha = 1e-4, beta = 0.75: alpha is
  divided by n as in cuda-convnet, and k is 1 where the paper has 2 (our LRNParams(size=5, alpha=1e-4,
  beta=0.75, k=1)).
* Caffe's dropout is inverted (kept units x2 in training, identity at test); the paper's multiplies by 0.5 at
  test. The import keeps Caffe's (``model.dropout_form = "inverted"``), with which its weights were trained.
* norm1 and norm2 normalise across all 96 / 256 maps: the window crosses the group boundary, where the
  paper's towers each normalise their own maps (``lrn_across_towers=True``; conv2, conv4, conv5 stay grouped).
* Caffe's images are BGR. The import reverses conv1's input-channel axis, so the imported network takes RGB
  as all of ours do; this is exact (a permutation of the weights).
* The input is raw 0..255 pixels minus the mean image (BGR (3, 256, 256), cut with the crop), unscaled: the
  config says ``data.normalize = "mean_image"``, ``data.input_scale = 1``, and the mean is written as RGB.
  Without a mean file the import uses that image's per-channel mean, (B, G, R) = (104.007, 116.669, 122.679).
* Max pooling 3/2 rounds the output size up in Caffe and down here; for 55 -> 27 -> 13 -> 6 the windows fit
  exactly, so both give the same maps.
* Training (the model zoo's readme): no PCA lighting, non-zero biases initialised to 0.1; the zoo reports
  57.1% top-1 and 80.2% top-5 on the ILSVRC-2012 validation set from the centre crop. Caffe's ImageNet
  example resizes images to 256x256 without keeping the aspect ratio; our stores keep it (shorter side 256,
  centre square), a small difference in what test images look like.

The file is read without Caffe or the protobuf package: a small reader of protobuf's wire format takes the
fields of caffe.proto's NetParameter it needs, in the current form (``layer``) or the V1 form (``layers``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alexnet.config import Config, load_config
from alexnet.data.labels import class_names, imagenet_synsets
from alexnet.errors import CheckpointError
from alexnet.export import export_trained, mean_path
from alexnet.models.build import TrainedNetwork, build_model
from alexnet.models.registry import CAFFE_LRN

MODEL = "alexnet_caffe"
WEIGHT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
BVLC_SHA1 = "9116a64c0fbe4459d18f4bb6b56d647b63920377"
# The per-channel mean of Caffe's ILSVRC-2012 mean image, B, G, R (python/caffe/imagenet/ilsvrc_2012_mean.npy).
BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
MEAN_SIZE = 256
CROP = 227  # Caffe's crop_size, and conv1 unpadded

# Field numbers of BVLC/caffe's src/caffe/proto/caffe.proto. NetParameter: layer = 100 (LayerParameter),
# layers = 2 (V1LayerParameter). Per form: (name, type, blobs, lrn_param); the V1 type is an enum.
_NET_LAYER, _NET_V1_LAYERS = 100, 2
_LAYER_FIELDS = {_NET_LAYER: (1, 2, 7, 118), _NET_V1_LAYERS: (4, 5, 6, 18)}
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 15: "LRN", 17: "Pooling"}
# LRNParameter: local_size = 1, alpha = 2, beta = 3, norm_region = 4 (0 = ACROSS_CHANNELS), k = 5; Caffe's defaults.
_LRN_FIELDS = {1: "local_size", 2: "alpha", 3: "beta", 4: "norm_region", 5: "k"}
_LRN_DEFAULTS = {"local_size": 5, "alpha": 1.0, "beta": 0.75, "norm_region": 0, "k": 1.0}
# bvlc_alexnet's order of the layers that compute (ReLU and dropout aside); CaffeNet pools before it normalises.
_ALEXNET_ORDER = ("Convolution", "LRN", "Pooling") * 2 + ("Convolution",) * 3 + ("Pooling",) + ("InnerProduct",) * 3
_FIXED_SIZE = {1: 8, 5: 4}  # wire type -> bytes: 64-bit and 32-bit fixed-width values


class _Malformed(Exception):
    """Bytes that are not protobuf's wire format, or end inside a field; the message says where."""


@dataclass(frozen=True)
class CaffeLayer:
    """One layer of a Caffe NetParameter, in file order."""

    name: str
    type: str  # "Convolution", "LRN", ... (a V1 enum value this module does not name: "V1 type N")
    blobs: tuple[np.ndarray, ...]  # blob 0 the weight, blob 1 the bias, each in its stored shape
    lrn: dict[str, float] | None = None  # an LRN layer's lrn_param, Caffe's defaults filled in


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _Malformed(f"a varint runs past the end at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _Malformed(f"a varint longer than 10 bytes ends at byte {pos}")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of one message: an int for a varint, else its bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
            continue
        if wire == 2:
            size, pos = _varint(buf, pos)
        elif wire in _FIXED_SIZE:
            size = _FIXED_SIZE[wire]
        else:  # 3 and 4 are the deprecated groups, which caffe.proto does not use; 6 and 7 do not exist
            raise _Malformed(f"wire type {wire} (field {field}) at byte {pos}")
        if pos + size > len(buf):
            raise _Malformed(f"field {field} at byte {pos} needs {size:,} bytes but only {len(buf) - pos:,} remain")
        yield field, wire, buf[pos : pos + size]
        pos += size


def _reals(wire: int, value: int | memoryview, dtype: str) -> np.ndarray:
    """A repeated float or double field's values: a packed run (wire type 2) or one unpacked value."""
    width = np.dtype(dtype).itemsize
    if (wire == 2 and len(value) % width == 0) or _FIXED_SIZE.get(wire) == width:
        return np.frombuffer(value, dtype)
    raise _Malformed(f"a {dtype} field of wire type {wire} does not hold whole values")


def _ints(wire: int, value: int | memoryview) -> list[int]:
    """A repeated integer field's values: packed varints (wire type 2) or one unpacked varint."""
    if wire == 0:
        return [value]
    if wire != 2:
        raise _Malformed(f"an integer field with wire type {wire}")
    out, pos = [], 0
    while pos < len(value):
        n, pos = _varint(value, pos)
        out.append(n)
    return out


def _blob(buf: memoryview) -> np.ndarray:
    """BlobProto: shape = 7 (BlobShape, dim = 1) or the legacy num, channels, height, width = 1..4;
    data = 5 (float), double_data = 8 (Caffe reads the doubles when there are any)."""
    legacy = [0, 0, 0, 0]
    shape, floats, doubles = None, [], []
    for field, wire, value in _fields(buf):
        if field == 7 and wire == 2:
            shape = [d for f, w, v in _fields(value) if f == 1 for d in _ints(w, v)]
        elif field == 5:
            floats.append(_reals(wire, value, "<f4"))
        elif field == 8:
            doubles.append(_reals(wire, value, "<f8"))
        elif 1 <= field <= 4 and wire == 0:
            legacy[field - 1] = value
    chunks = doubles or floats
    values = np.concatenate(chunks) if len(chunks) > 1 else chunks[0] if chunks else np.zeros(0, np.float32)
    dims = shape if shape is not None else legacy
    if math.prod(dims) != values.size:
        raise _Malformed(f"a blob of shape {tuple(dims)} holds {values.size:,} values")
    return values.reshape(dims)


def _text(value: int | memoryview) -> str:
    return bytes(value).decode("utf-8", errors="replace") if isinstance(value, memoryview) else str(value)


def _layer(buf: memoryview, form: int) -> CaffeLayer:
    name_field, type_field, blobs_field, lrn_field = _LAYER_FIELDS[form]
    name, kind, blobs, lrn = "", "", [], dict(_LRN_DEFAULTS)
    for field, wire, value in _fields(buf):
        if field == name_field:
            name = _text(value)
        elif field == type_field:
            v1_enum = form == _NET_V1_LAYERS and wire == 0
            kind = _V1_TYPES.get(value, f"V1 type {value}") if v1_enum else _text(value)
        elif field == blobs_field and wire == 2:
            blobs.append(_blob(value))
        elif field == lrn_field and wire == 2:
            for f, w, v in _fields(value):
                if f in _LRN_FIELDS and w in (0, 5):
                    lrn[_LRN_FIELDS[f]] = v if w == 0 else float(_reals(w, v, "<f4")[0])
    return CaffeLayer(name, kind, tuple(blobs), lrn if kind == "LRN" else None)


def _unreadable(path: Path, err: _Malformed, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} cannot be read as {what}: {err}. A truncated download ends like this: fetch it again and "
        f"compare its sha1 (bvlc_alexnet.caffemodel: {BVLC_SHA1}); a .prototxt is text and holds no weights"
    )


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """Every layer of a ``.caffemodel`` (a NetParameter in protobuf's binary format), in file order.

    Reads both forms of caffe.proto: ``layer`` (field 100) and the V1 ``layers`` (field 2); other fields,
    and the fields of a layer other than its name, type, blobs and LRN constants, are skipped.
    """
    path = Path(path)
    buf = memoryview(path.read_bytes())
    try:
        layers = [_layer(value, field) for field, wire, value in _fields(buf)
                  if field in _LAYER_FIELDS and wire == 2]
    except _Malformed as err:
        raise _unreadable(path, err, "a Caffe model (a NetParameter in protobuf's binary format)") from None
    if not layers:
        raise CheckpointError(
            f"{path} holds no Caffe layers (NetParameter fields 100 `layer` or 2 `layers`): it is not a "
            "trained .caffemodel; give bvlc_alexnet.caffemodel from the Caffe model zoo"
        )
    return layers


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without its leading 1s: Caffe's legacy 4-D blobs store a bias as (1, 1, 1, 96)."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def read_mean(path: str | os.PathLike | None) -> np.ndarray:
    """Caffe's mean image as our RGB float32 (3, S, S), 0..255.

    Args:
        path: a BlobProto (``imagenet_mean.binaryproto``, (1, 3, 256, 256)) or Caffe's ``.npy``
            ((3, 256, 256)), both BGR; None: the per-channel mean `BGR_MEAN` over 256x256.
    """
    if path is None:
        bgr = np.broadcast_to(np.array(BGR_MEAN)[:, None, None], (3, MEAN_SIZE, MEAN_SIZE))
    elif Path(path).suffix == ".npy":
        try:
            bgr = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as err:
            raise ValueError(f"{path} is not a numpy array ({err}); give Caffe's "
                             "python/caffe/imagenet/ilsvrc_2012_mean.npy or imagenet_mean.binaryproto") from None
    else:
        try:
            bgr = _blob(memoryview(Path(path).read_bytes()))
        except _Malformed as err:
            raise _unreadable(Path(path), err, "a Caffe mean image (a BlobProto)") from None
    side = bgr.shape[-1] if bgr.ndim else 0
    if _strip_ones(bgr.shape) != (3, side, side) or side < CROP:
        raise ValueError(
            f"{path} holds a mean of shape {tuple(bgr.shape)}; expected Caffe's BGR mean image (1, 3, S, S) "
            f"with S >= {CROP} (imagenet_mean.binaryproto from data/ilsvrc12/get_ilsvrc_aux.sh is 256)"
        )
    return np.ascontiguousarray(bgr.reshape(3, side, side)[::-1], dtype=np.float32)


def read_synset_words(path: str | os.PathLike, num_classes: int) -> tuple[list[str], list[str]]:
    """(wnids, names) from Caffe's ``synset_words.txt``, line i naming fc8's output i.

    Names are those our stores give (`alexnet.data.labels.class_names`: the ILSVRC-2012 name of a synset,
    else the file's own words), so an imported network names its classes as a trained one does.
    """
    words = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            words.setdefault(wnid, []).append(name.strip())
    wnids = list(words)
    if len(wnids) != num_classes or any(len(w) > 1 for w in words.values()):
        raise ValueError(
            f"{path} has {sum(map(len, words.values()))} lines and {len(wnids)} distinct wnids, but fc8 has "
            f"{num_classes} outputs; give Caffe's data/ilsvrc12/synset_words.txt (one 'n01440764 tench, Tinca "
            "tinca' line per class)"
        )
    return wnids, class_names(wnids, {wnid: w[0] for wnid, w in words.items()})


def caffe_config() -> Config:
    """The resolved config of an imported bvlc_alexnet: 227 crops of raw pixels minus the mean image."""
    return load_config(None, [
        f"model.name={MODEL}", "model.num_classes=1000", "model.dropout_form=inverted",
        f"model.input_size={CROP}", f"data.crop={CROP}",
        "data.normalize=mean_image", "data.input_scale=1.0",
    ])


def _check_architecture(layers: list[CaffeLayer], path: Path) -> None:
    """Refuse a file whose layer order or LRN constants are not bvlc_alexnet's: the weights of CaffeNet
    (pooling before normalisation) have the same shapes but compute something else in our network."""
    computing = [layer for layer in layers if layer.type in ("Convolution", "LRN", "Pooling", "InnerProduct")]
    order = tuple(layer.type for layer in computing)
    if any(kind in ("LRN", "Pooling") for kind in order) and order != _ALEXNET_ORDER:
        raise CheckpointError(
            f"{path} computes {' '.join(layer.name for layer in computing)}, not bvlc_alexnet's conv1 norm1 pool1 "
            f"conv2 norm2 pool2 conv3 conv4 conv5 pool5 fc6 fc7 fc8 ({MODEL} is that network only; "
            "bvlc_reference_caffenet pools before it normalises)"
        )
    expected = {"local_size": CAFFE_LRN.size, "alpha": CAFFE_LRN.alpha, "beta": CAFFE_LRN.beta,
                "norm_region": 0, "k": CAFFE_LRN.k}
    for layer in layers:
        differ = {k: v for k, v in (layer.lrn or {}).items() if not math.isclose(v, expected[k], rel_tol=1e-6)}
        if differ:
            raise CheckpointError(
                f"{path}: LRN layer {layer.name} has {differ}, but {MODEL} computes bvlc_alexnet's "
                f"{expected} (norm_region 0 = across channels)"
            )


def _weights(layers: list[CaffeLayer], own: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Our state dict from the Caffe layers named conv1..fc8 (blob 0 weight, blob 1 bias), every shape
    checked against ours; conv1's input channels reversed from Caffe's BGR to our RGB."""
    by_name: dict[str, CaffeLayer] = {}
    for layer in layers:
        if layer.blobs and layer.name in by_name:
            raise CheckpointError(f"{path} has two layers named {layer.name!r} with weights; which to take is unclear")
        if layer.blobs:
            by_name[layer.name] = layer
    problems, state = [], {}
    for name in WEIGHT_LAYERS:
        layer = by_name.get(name)
        if layer is None or len(layer.blobs) != 2:
            problems.append(f"layer {name} is missing" if layer is None
                            else f"layer {name} has {len(layer.blobs)} blobs, not a weight and a bias")
            continue
        for key, blob in zip(("weight", "bias"), layer.blobs, strict=True):
            want = tuple(own[f"{name}.{key}"].shape)
            if _strip_ones(blob.shape) != want:
                problems.append(f"{name} {key} is {tuple(blob.shape)} in the file but {want} in {MODEL}")
                continue
            state[f"{name}.{key}"] = torch.from_numpy(blob.astype(np.float32).reshape(want))
    if problems:
        found = ", ".join(by_name) or "none"
        raise CheckpointError(
            f"{path} does not fit {MODEL} (Caffe's bvlc_alexnet): {'; '.join(problems)} (layers with weights in "
            f"the file: {found}); give bvlc_alexnet.caffemodel, complete (sha1 {BVLC_SHA1})"
        )
    state["conv1.weight"] = state["conv1.weight"].flip(1).contiguous()  # Caffe's B, G, R -> our R, G, B
    return state


def import_caffe(
    caffemodel: str | os.PathLike,
    out: str | os.PathLike,
    synset_words: str | os.PathLike | None = None,
    mean: str | os.PathLike | None = None,
) -> dict:
    """Import Caffe's bvlc_alexnet into ``alexnet_caffe`` and write it as `alexnet export` does.

    Args:
        caffemodel: ``bvlc_alexnet.caffemodel`` (see the module docstring for where to get it).
        out: the weights file to write, ``NAME.safetensors``; its mean image goes beside it (``NAME.mean.npy``).
        synset_words: Caffe's ``synset_words.txt`` for the class wnids and names; None: the ILSVRC-2012
            synsets in sorted order (Caffe's label order) with our names for them.
        mean: Caffe's mean image (``.binaryproto`` or ``.npy``); None: its per-channel mean (`BGR_MEAN`).

    Returns:
        {"out", "mean": the paths written, "mean_source", "layers": {name: {"weight": shape, "bias": shape}},
        "parameters": their count, "classes": where the classes came from}.
    """
    caffemodel, out = Path(caffemodel), Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: name it NAME.safetensors (load_trained and predict read that suffix)")
    config = caffe_config()
    num_classes = config.model.num_classes
    if synset_words is None:  # the small files first: a mistake in them costs no 233 MB read
        # Caffe's fc8 follows the ILSVRC-2012 synsets in sorted order, the order our labels use.
        classes = list(imagenet_synsets())
        names, source = class_names(classes), "the 1000 ILSVRC-2012 synsets in sorted order (no synset_words given)"
    else:
        classes, names = read_synset_words(synset_words, num_classes)
        source = f"synset_words {synset_words}"
    rgb_mean = torch.from_numpy(read_mean(mean))
    layers = read_caffemodel(caffemodel)
    _check_architecture(layers, caffemodel)
    # On the meta device: no 61M random numbers drawn only to be overwritten; assign=True takes ours.
    with torch.device("meta"):
        model = build_model(config.model)
    state = _weights(layers, model.state_dict(), caffemodel)
    model.load_state_dict(state, assign=True)
    export_trained(TrainedNetwork(model.eval(), config, classes, names, rgb_mean, caffemodel), "safetensors", out)
    return {
        "out": str(out),
        "mean": str(mean_path(out)),
        "mean_source": str(mean) if mean is not None else f"per-channel BGR mean {BGR_MEAN}",
        "layers": {name: {"weight": list(state[f"{name}.weight"].shape), "bias": list(state[f"{name}.bias"].shape)}
                   for name in WEIGHT_LAYERS},
        "parameters": sum(t.numel() for t in state.values()),
        "classes": source,
    }


def format_import(result: dict) -> str:
    """A few lines for a person: what was written, from what."""
    shapes = ", ".join(f"{name} {'x'.join(map(str, s['weight']))}" for name, s in result["layers"].items())
    return "\n".join([
        f"wrote {result['out']}: {MODEL}, {len(result['layers'])} layers, {result['parameters']:,} parameters",
        f"  layers: {shapes} (conv1's input channels reversed: it takes RGB)",
        f"  mean image: {result['mean']} (from {result['mean_source']}, RGB)",
        f"  classes: {result['classes']}",
    ])
