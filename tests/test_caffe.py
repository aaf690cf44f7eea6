"""Caffe import: a NetParameter written here in protobuf's wire format (both forms, bvlc_alexnet's shapes,
random weights) lands in alexnet_caffe, which then computes what Caffe's net computes."""

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alexnet.caffe import BGR_MEAN, format_import, import_caffe, read_caffemodel, read_mean
from alexnet.checkpoint import load_weights
from alexnet.data.labels import imagenet_synsets
from alexnet.errors import CheckpointError
from alexnet.model_parallel import TowerParallel
from alexnet.models import create_model
from alexnet.models.build import load_trained

# bvlc_alexnet's parameter layers: name -> (weight shape, stride, padding, groups); None for fc layers.
SHAPES = {
    "conv1": ((96, 3, 11, 11), 4, 0, 1),
    "conv2": ((256, 48, 5, 5), 1, 2, 2),
    "conv3": ((384, 256, 3, 3), 1, 1, 1),
    "conv4": ((384, 192, 3, 3), 1, 1, 2),
    "conv5": ((256, 192, 3, 3), 1, 1, 2),
    "fc6": ((4096, 9216), None, None, None),
    "fc7": ((4096, 4096), None, None, None),
    "fc8": ((1000, 4096), None, None, None),
}
# deploy.prototxt's layers in order (models/bvlc_alexnet in BVLC/caffe), with their types.
DEPLOY = [
    ("conv1", "Convolution"), ("relu1", "ReLU"), ("norm1", "LRN"), ("pool1", "Pooling"),
    ("conv2", "Convolution"), ("relu2", "ReLU"), ("norm2", "LRN"), ("pool2", "Pooling"),
    ("conv3", "Convolution"), ("relu3", "ReLU"), ("conv4", "Convolution"), ("relu4", "ReLU"),
    ("conv5", "Convolution"), ("relu5", "ReLU"), ("pool5", "Pooling"),
    ("fc6", "InnerProduct"), ("relu6", "ReLU"), ("drop6", "Dropout"),
    ("fc7", "InnerProduct"), ("relu7", "ReLU"), ("drop7", "Dropout"),
    ("fc8", "InnerProduct"), ("prob", "Softmax"),
]
V1_ENUM = {"Convolution": 4, "Dropout": 6, "InnerProduct": 14, "LRN": 15, "Pooling": 17, "ReLU": 18, "Softmax": 20}


# --- a protobuf wire-format writer for caffe.proto's NetParameter ---------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def encode_blob(a: np.ndarray, legacy: bool = False, packed: bool = True, double: bool = False) -> bytes:
    """BlobProto: legacy num/channels/height/width (1..4) or shape (7); data (5) or double_data (8)."""
    if legacy:
        dims = (1,) * (4 - a.ndim) + a.shape
        head = b"".join(_int(i + 1, d) for i, d in enumerate(dims))
    else:
        head = _bytes(7, _bytes(1, b"".join(map(_varint, a.shape))) if packed
                      else b"".join(_int(1, d) for d in a.shape))
    field, fmt = (8, "<f8") if double else (5, "<f4")
    values = a.astype(fmt).ravel()
    if packed:
        return head + _bytes(field, values.tobytes())
    wire = 1 if double else 5
    return head + b"".join(_key(field, wire) + v.tobytes() for v in values)


def encode_layer(name: str, kind: str, blobs: tuple = (), v1: bool = False, lrn: bytes | None = None,
                 **blob_kw) -> bytes:
    """One LayerParameter (NetParameter field 100) or V1LayerParameter (field 2), with a few fields the
    reader must skip (bottom, top, and an unknown varint and fixed64)."""
    if v1:
        body = (_bytes(2, b"bottom") + _bytes(4, name.encode()) + _int(5, V1_ENUM[kind])
                + b"".join(_bytes(6, encode_blob(b, legacy=True, **blob_kw)) for b in blobs))
        body += _bytes(18, lrn) if lrn is not None else b""
        return _bytes(2, body)
    body = (_bytes(1, name.encode()) + _bytes(2, kind.encode()) + _bytes(3, b"bottom") + _bytes(4, b"top")
            + _int(999, 7) + _key(998, 1) + struct.pack("<d", 1.5)
            + b"".join(_bytes(7, encode_blob(b, **blob_kw)) for b in blobs))
    body += _bytes(118, lrn) if lrn is not None else b""
    return _bytes(100, body)


BVLC_LRN = _int(1, 5) + _float(2, 1e-4) + _float(3, 0.75)  # deploy.prototxt's lrn_param; k is left at 1


def encode_net(weights: dict, v1: bool, order: list = DEPLOY, lrn: bytes = BVLC_LRN) -> bytes:
    layers = [encode_layer(name, kind, weights.get(name, ()), v1, lrn if kind == "LRN" else None)
              for name, kind in order]
    return _bytes(1, b"AlexNet") + b"".join(layers)


# --- bvlc_alexnet with random weights, and Caffe's computation of it -------------------------------------------

@pytest.fixture(scope="module")
def caffe_weights() -> dict:
    """Weights of bvlc_alexnet's shapes whose activations stay on the pixel scale, so LRN acts (He et al.)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, (shape, *_) in SHAPES.items():
        weight = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2 / np.prod(shape[1:])))
        out[name] = (weight, rng.standard_normal(shape[0], dtype=np.float32) * np.float32(0.5))
    return out


def caffe_lrn(x: torch.Tensor, n: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> torch.Tensor:
    """Caffe's LRNLayer, ACROSS_CHANNELS: x_c / (k + alpha/n * sum_{|j - c| <= n/2} x_j^2)^beta, all channels."""
    channels = x.shape[1]
    scale = torch.stack([k + alpha / n * (x[:, max(0, c - n // 2): c + n // 2 + 1] ** 2).sum(1)
                         for c in range(channels)], 1)
    return x * scale ** -beta


def caffe_forward(bgr: torch.Tensor, weights: dict) -> torch.Tensor:
    """bvlc_alexnet's deploy net in float64: BGR minus the mean in, fc8 out; pooling rounds up as Caffe's."""
    x = bgr
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        w, b = (torch.from_numpy(t).double() for t in weights[name])
        _, stride, pad, groups = SHAPES[name]
        x = F.relu(F.conv2d(x, w, b, stride, pad, groups=groups))
        if name in ("conv1", "conv2"):
            x = caffe_lrn(x)
        if name in ("conv1", "conv2", "conv5"):
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = x.flatten(1)
    for name in ("fc6", "fc7", "fc8"):
        w, b = (torch.from_numpy(t).double() for t in weights[name])
        x = F.linear(x, w, b)
        x = F.relu(x) if name != "fc8" else x  # dropout is the identity at test time
    return x


def test_alexnet_caffe_is_the_paper_net_with_caffe_lrn_across_towers():
    torch.manual_seed(0)
    model = create_model("alexnet_caffe", input_size=227).eval()
    assert sum(p.numel() for p in model.parameters()) == 60_965_224
    assert model.conv1.padding == (0, 0)
    assert [getattr(model, f"conv{i}").groups for i in range(1, 6)] == [1, 2, 1, 2, 2]
    x = torch.rand(1, 96, 13, 13) * 200
    moved = x.clone()
    moved[:, 48] += 100  # the second tower's first map
    with torch.no_grad():
        y, y_moved = model.conv1_post(x), model.conv1_post(moved)
        paper = create_model("alexnet").conv1_post
        assert torch.equal(paper(x)[:, 47], paper(moved)[:, 47])  # the paper's window stops at the tower
    assert not torch.allclose(y[:, 47], y_moved[:, 47])  # Caffe's window crosses into the other tower
    relu = F.relu(x)
    want = F.max_pool2d(caffe_lrn(relu.double()), 3, 2).float()
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="across both towers"):
        TowerParallel(model, (torch.device("cpu"), torch.device("cpu")))


def test_reader_takes_every_encoding_and_skips_unknown_fields(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 3, 2, 2), dtype=np.float32), rng.standard_normal(4, dtype=np.float32)
    net = (_bytes(1, b"tiny") + _int(7, 1)
           + encode_layer("packed", "Convolution", (a, b))
           + encode_layer("unpacked", "Convolution", (a, b), packed=False)
           + encode_layer("doubles", "InnerProduct", (a, b), double=True)
           + encode_layer("unpacked_doubles", "InnerProduct", (a, b), packed=False, double=True)
           + encode_layer("legacy", "Convolution", (a, b), v1=True)
           + encode_layer("norm", "LRN", v1=True, lrn=_float(5, 2.0))
           + encode_layer("unnamed_type", "Deconvolution"))
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(net)
    layers = read_caffemodel(path)
    assert [(layer.name, layer.type) for layer in layers] == [
        ("packed", "Convolution"), ("unpacked", "Convolution"), ("doubles", "InnerProduct"),
        ("unpacked_doubles", "InnerProduct"), ("legacy", "Convolution"), ("norm", "LRN"),
        ("unnamed_type", "Deconvolution")]
    for layer in layers[:4]:
        assert layer.blobs[0].shape == (4, 3, 2, 2) and layer.blobs[1].shape == (4,)
        np.testing.assert_array_equal(layer.blobs[0], a)
        np.testing.assert_array_equal(layer.blobs[1], b)
    legacy = layers[4].blobs
    assert legacy[0].shape == (4, 3, 2, 2) and legacy[1].shape == (1, 1, 1, 4)  # V1's 4-D bias
    assert layers[5].lrn == {"local_size": 5, "alpha": 1.0, "beta": 0.75, "norm_region": 0, "k": 2.0}
    assert layers[0].lrn is None and layers[6].blobs == ()


def test_mean_file_is_read_as_rgb(tmp_path):
    bgr = np.random.default_rng(2).uniform(90, 130, (3, 256, 256))
    (tmp_path / "mean.binaryproto").write_bytes(encode_blob(bgr[None], legacy=True))
    np.save(tmp_path / "mean.npy", bgr)
    for name in ("mean.binaryproto", "mean.npy"):
        rgb = read_mean(tmp_path / name)
        assert rgb.dtype == np.float32 and rgb.shape == (3, 256, 256)
        np.testing.assert_array_equal(rgb, bgr[::-1].astype(np.float32))
    np.testing.assert_allclose(read_mean(None)[:, 7, 9], BGR_MEAN[::-1], rtol=1e-7)
    (tmp_path / "small.binaryproto").write_bytes(encode_blob(bgr[None, :, :200, :200], legacy=True))
    with pytest.raises(ValueError, match=r"small.binaryproto holds a mean of shape \(1, 3, 200, 200\)"):
        read_mean(tmp_path / "small.binaryproto")


@pytest.mark.slow
@pytest.mark.parametrize("v1", [False, True], ids=["layer", "V1 layers"])
def test_import_computes_what_caffe_computes(tmp_path, caffe_weights, v1):
    model_file = tmp_path / "bvlc_alexnet.caffemodel"
    model_file.write_bytes(encode_net(caffe_weights, v1))
    rng = np.random.default_rng(3)
    kwargs = {}
    mean_bgr = np.broadcast_to(np.array(BGR_MEAN)[:, None, None], (3, 256, 256))
    if not v1:  # the current form with Caffe's mean image and synset_words; V1 with the defaults
        mean_bgr = mean_bgr + rng.uniform(-20, 20, (3, 256, 256))
        (tmp_path / "imagenet_mean.binaryproto").write_bytes(encode_blob(mean_bgr[None], legacy=True))
        wnids = imagenet_synsets()
        lines = ["n01440764 tench, Tinca tinca", *(f"{w} thing {i}" for i, w in enumerate(wnids[1:], 1))]
        (tmp_path / "synset_words.txt").write_text("\n".join(lines) + "\n")
        kwargs = {"synset_words": tmp_path / "synset_words.txt", "mean": tmp_path / "imagenet_mean.binaryproto"}
    out = tmp_path / "caffe.safetensors"

    result = import_caffe(model_file, out, **kwargs)

    assert result["parameters"] == 60_965_224 and result["out"] == str(out)
    assert result["layers"]["conv2"] == {"weight": [256, 48, 5, 5], "bias": [256]}
    assert ("synset_words" if not v1 else "no synset_words") in result["classes"]
    assert "60,965,224 parameters" in format_import(result)
    trained = load_trained(out)
    # (a) every weight where it belongs; conv1's input channels reversed, BGR -> RGB
    state = trained.model.state_dict()
    for name, (weight, bias) in caffe_weights.items():
        want = weight[:, ::-1] if name == "conv1" else weight
        np.testing.assert_array_equal(state[f"{name}.weight"].numpy(), want, err_msg=name)
        np.testing.assert_array_equal(state[f"{name}.bias"].numpy(), bias, err_msg=name)
    # (d) what alexnet export writes: the config, the classes, an RGB mean image beside the weights
    meta = load_weights(out)[1]
    config = json.loads(meta["config"])
    assert meta["model"] == config["model"]["name"] == "alexnet_caffe"
    assert (config["model"]["input_size"], config["data"]["crop"], config["model"]["num_classes"]) == (227, 227, 1000)
    assert (config["data"]["normalize"], config["data"]["input_scale"]) == ("mean_image", 1.0)
    np.testing.assert_array_equal(np.load(tmp_path / meta["input_mean_file"]), mean_bgr[::-1].astype(np.float32))
    if v1:
        # no synset_words: Caffe's label order is the sorted ILSVRC-2012 synsets
        assert trained.classes[0] == "n01440764" and trained.classes == sorted(trained.classes)
        assert trained.class_names[0] == "tench" and len(set(trained.classes)) == 1000
    else:
        assert trained.classes == list(wnids) and trained.class_names[0] == "tench"
    # (b) our network on an RGB image equals Caffe's on the BGR image minus its mean, centre crop 227
    image = torch.from_numpy(rng.integers(0, 256, (2, 3, 256, 256), dtype=np.uint8))
    with torch.no_grad():
        ours = trained.model(trained.augmenter("cpu").center(image)).double()
        offset = (256 - 227) // 2  # Caffe's centre crop, of the image and of the mean image alike
        bgr = image.flip(1).double() - torch.from_numpy(np.ascontiguousarray(mean_bgr))
        reference = caffe_forward(bgr[:, :, offset:offset + 227, offset:offset + 227], caffe_weights)
    assert reference.abs().max() > 1.0  # the logits are not vanishing: the comparison means something
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


def _import_error(tmp_path, data: bytes, **kwargs) -> str:
    path = tmp_path / "bvlc_alexnet.caffemodel"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        import_caffe(path, tmp_path / "out.safetensors", **kwargs)
    assert str(path) in str(err.value)
    assert not (tmp_path / "out.safetensors").exists()
    return str(err.value)


def test_truncated_and_foreign_files_are_refused(tmp_path, caffe_weights):
    small = {name: caffe_weights[name] for name in ("conv1", "conv2")}
    whole = encode_net(small, v1=False)
    message = _import_error(tmp_path, whole[: len(whole) - 1000])
    assert "truncated" in message and "remain" in message and "sha1" in message
    assert "not a trained .caffemodel" in _import_error(tmp_path, encode_net({}, v1=False, order=[]))
    prototxt = b'name: "AlexNet"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n'
    assert "cannot be read as a Caffe model" in _import_error(tmp_path, prototxt)


def test_a_missing_layer_or_a_wrong_shape_is_named(tmp_path, caffe_weights):
    without_fc8 = {name: w for name, w in caffe_weights.items() if name != "fc8"}
    message = _import_error(tmp_path, encode_net(without_fc8, v1=True))
    assert "layer fc8 is missing" in message and "conv1, conv2" in message
    ungrouped = {"conv1": caffe_weights["conv1"], "conv2": (np.zeros((256, 96, 5, 5), np.float32), np.zeros(256))}
    message = _import_error(tmp_path, encode_net(ungrouped, v1=False))
    assert "conv2 weight is (256, 96, 5, 5) in the file but (256, 48, 5, 5) in alexnet_caffe" in message
    assert "conv1 weight" not in message and "conv2 bias" not in message


def test_caffenet_order_and_other_lrn_constants_are_refused(tmp_path):
    caffenet = [("conv1", "Convolution"), ("pool1", "Pooling"), ("norm1", "LRN"), *DEPLOY[4:]]
    assert "pool1 norm1" in _import_error(tmp_path, encode_net({}, v1=False, order=caffenet))
    message = _import_error(tmp_path, encode_net({}, v1=True, lrn=_int(1, 5)))  # alpha left at Caffe's 1
    assert "norm1" in message and "'alpha': 1.0" in message


def test_bad_arguments_name_the_fix(tmp_path):
    model_file = tmp_path / "bvlc_alexnet.caffemodel"  # never read: the arguments are checked first
    with pytest.raises(ValueError, match="NAME.safetensors"):
        import_caffe(model_file, tmp_path / "out.pt")
    (tmp_path / "synset_words.txt").write_text("n01440764 tench\nn01443537 goldfish\nn01443537 goldfish\n")
    with pytest.raises(ValueError, match="3 lines and 2 distinct wnids, but fc8 has 1000 outputs"):
        import_caffe(model_file, tmp_path / "out.safetensors", synset_words=tmp_path / "synset_words.txt")
    (tmp_path / "mean.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="mean.npy is not a numpy array"):
        import_caffe(model_file, tmp_path / "out.safetensors", mean=tmp_path / "mean.npy")


@pytest.mark.slow
def test_import_caffe_command_and_the_analyses_on_its_output(tmp_path, caffe_weights, capsys):
    from alexnet.cli import main

    model_file = tmp_path / "bvlc_alexnet.caffemodel"
    model_file.write_bytes(encode_net(caffe_weights, v1=False))
    out = tmp_path / "bvlc_alexnet.safetensors"
    assert main(["import-caffe", str(model_file), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 60_965_224
    assert main(["kernels", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["towers"]) == 2 and info["image"] == str(tmp_path / "bvlc_alexnet.analysis" / "kernels.png")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(out), str(image), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert len(predictions) == 5 and predictions[0]["class"].startswith("n")
