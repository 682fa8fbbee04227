"""dlib-torch: the .dat reader, the torch port of dlib's ResNet, its cache, and parity with dlib itself."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from conftest import SHARED, require

from kface.backbones import dlib_torch, load_backbone
from kface.backbones.dlib_format import ByteStream, DlibFormatError, read_network
from kface.backbones.dlib_torch import (
    CUT_POINTS,
    DlibResNet,
    FrozenAffine,
    add_zero_extended,
    conversion_cache_file,
    fold_affine,
    load_dlib_resnet,
    network_from_records,
)
from kface.errors import InputError
from kface.models.dlib_files import DLIB_LANDMARKS_5, DLIB_RESNET, model_file

LFW_IMAGES = SHARED / "data" / "lfw" / "images"
PARITY_CHIPS = 110


def encode_int(value: int) -> bytes:
    """dlib's integer encoding, written from its documented layout (independent of the reader)."""
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def stream(data: bytes) -> ByteStream:
    return ByteStream(data, "test.dat")


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KFACE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def dat_network():
    return read_network(model_file(DLIB_RESNET))


@pytest.fixture(scope="module")
def converted(dat_network):
    return network_from_records(dat_network).eval()


# ---- primitives --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 255, 256, 300, 2**31 - 1, 2**40 + 7, -1, -300, -(2**33)])
def test_integers_round_trip_through_dlib_encoding(value):
    data = encode_int(value)
    reader = stream(data)
    assert reader.int() == value
    assert reader.pos == len(data)


def test_integer_with_reserved_control_bits_is_rejected():
    with pytest.raises(DlibFormatError, match="control byte"):
        stream(b"\x31\x00").int()


def test_float_is_mantissa_then_exponent():
    # 0.04f as dlib writes the loss margin: mantissa 10737418, exponent -28.
    assert stream(bytes.fromhex("030ad7a3811c")).float() == pytest.approx(0.04, rel=1e-7)
    assert stream(encode_int(3) + encode_int(-1)).float() == 1.5
    assert stream(encode_int(1) + encode_int(32000)).float() == float("inf")


def test_string_bool_and_tensor():
    values = np.array([1.5, -2.0, 0.25, 8.0, 3.0, -0.5], dtype=np.float32)
    data = (encode_int(5) + b"relu_" + b"1" + b"0"
            + encode_int(2) + b"".join(encode_int(d) for d in (1, 2, 3, 1)) + struct.pack("<6f", *values))
    reader = stream(data)
    assert reader.string() == "relu_"
    assert reader.bool() is True and reader.bool() is False
    tensor = reader.tensor()
    assert tensor.shape == (1, 2, 3, 1) and tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor.reshape(-1), values)


def test_truncated_tensor_is_an_error():
    data = encode_int(2) + b"".join(encode_int(d) for d in (1, 1, 1, 4)) + struct.pack("<2f", 1, 2)
    with pytest.raises(DlibFormatError, match="ends early"):
        stream(data).tensor()


# ---- the real file -----------------------------------------------------------------------------

def test_reader_decodes_the_shipped_model(dat_network):
    net = dat_network
    assert net.loss.record == "loss_metric_2"
    assert net.loss.settings["margin"] == pytest.approx(0.04)
    assert len(net.wrapper_versions) == 130
    assert net.wrapper_versions.count(1) == 22  # 18 tags + 4 skips write no record
    counts = {kind: net.count(kind) for kind in ("con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc")}
    assert counts == {"con": 29, "affine": 29, "relu": 29, "max_pool": 1, "avg_pool": 5, "add_prev": 14, "fc": 1}
    means = [net.input.settings[name] for name in ("avg_red", "avg_green", "avg_blue")]
    assert means == pytest.approx([122.782, 117.001, 104.298], abs=1e-4)
    assert net.layers[0].record == "con_4" and net.layers[0].settings["filters_shape"] == (32, 3, 7, 7)
    assert net.layers[-1].record == "fc_2" and net.layers[-1].arrays["params"].shape == (256, 128, 1, 1)


def test_truncated_and_padded_files_are_rejected(tmp_path):
    data = model_file(DLIB_RESNET).read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[:-1000])
    with pytest.raises(DlibFormatError, match="ends early"):
        read_network(truncated)
    padded = tmp_path / "padded.dat"
    padded.write_bytes(data + b"\x00")
    with pytest.raises(DlibFormatError, match="left after"):
        read_network(padded)


def test_a_different_architecture_is_refused():
    network = read_network(model_file(DLIB_RESNET))
    network.layers[4].settings["stride_y"] = 2  # the first block's first convolution
    with pytest.raises(DlibFormatError, match="does not fit"):
        network_from_records(network)


# ---- the module --------------------------------------------------------------------------------

def test_add_zero_extended_pads_channels_at_the_end_and_space_at_bottom_right():
    small = torch.arange(4, dtype=torch.float32).view(1, 1, 2, 2)
    large = torch.ones(1, 2, 3, 3)
    out = add_zero_extended(small, large)
    expected = torch.ones(1, 2, 3, 3)
    expected[0, 0, :2, :2] += small[0, 0]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(add_zero_extended(large, small), expected)


def test_stage_resolutions_follow_dlib(converted):
    x = torch.zeros(1, 3, 150, 150)
    sizes = []
    with torch.no_grad():
        h = converted.stem(x)
        sizes.append(tuple(h.shape[1:]))
        for stage in converted.stages:
            h = stage(h)
            sizes.append(tuple(h.shape[1:]))
    assert sizes == [(32, 35, 35), (32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 2, 2)]


@pytest.mark.parametrize("cut", CUT_POINTS)
def test_prefix_then_suffix_is_the_whole_network(converted, cut):
    x = torch.randn(2, 3, 150, 150, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = converted(x)
        split = converted.forward_suffix(converted.forward_prefix(x, cut), cut)
    torch.testing.assert_close(split, whole)


def test_folded_inference_copy_computes_the_same_function(converted):
    folded = fold_affine(converted)
    assert not any(isinstance(m, FrozenAffine) for m in folded.modules())
    x = torch.randn(2, 3, 150, 150, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), converted(x), rtol=0, atol=1e-5)
    assert any(isinstance(m, FrozenAffine) for m in converted.modules())  # the original is untouched


def test_set_trainable_unfreezes_only_the_suffix():
    net = DlibResNet()
    fc = 256 * 128
    last_block = 2 * (256 * 256 * 9 + 256)
    last_stage = (256 * 128 * 9 + 256) + 7 * (256 * 256 * 9 + 256)  # one 128->256 conv, seven 256->256
    for cut, expected in [("none", 0), ("fc", fc), ("last-block", last_block + fc), ("last-stage", last_stage + fc)]:
        trainable = net.set_trainable(cut)
        assert sum(p.numel() for p in trainable) == expected
        assert sum(p.numel() for p in net.parameters() if p.requires_grad) == expected
    with pytest.raises(InputError, match="cut point"):
        net.set_trainable("everything")


# ---- cache and backbone --------------------------------------------------------------------------

def test_conversion_is_cached_and_reloaded_without_parsing(cache_folder, converted, monkeypatch):
    first = load_dlib_resnet()
    cache_file = conversion_cache_file(model_file(DLIB_RESNET))
    assert cache_file.parent.parent == cache_folder and cache_file.is_file()
    assert not list(cache_file.parent.glob("*.tmp"))

    def no_parsing(path):
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(dlib_torch, "read_network", no_parsing)
    second = load_dlib_resnet()
    for name, tensor in converted.state_dict().items():
        torch.testing.assert_close(first.state_dict()[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(second.state_dict()[name], tensor, rtol=0, atol=0)


def test_corrupt_cache_is_converted_again(cache_folder, converted):
    cache_file = conversion_cache_file(model_file(DLIB_RESNET))
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(b"not a state dict")
    net = load_dlib_resnet()
    torch.testing.assert_close(net.fc.weight, converted.fc.weight, rtol=0, atol=0)
    assert cache_file.stat().st_size > 1_000_000


def test_backbone_rejects_bad_chips_and_handles_empty_input(cache_folder):
    backbone = load_backbone("dlib-torch", device="cpu")
    assert backbone.name == "dlib-torch" and backbone.spec.embedding_size == 128
    with pytest.raises(InputError, match="uint8"):
        backbone.embed_chips(np.zeros((2, 160, 160, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="uint8"):
        backbone.embed_chips(np.zeros((2, 150, 150, 3), dtype=np.float32))
    assert backbone.embed_chips(np.zeros((0, 150, 150, 3), dtype=np.uint8)).shape == (0, 128)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_an_input_error(cache_folder):
    with pytest.raises(InputError, match="cuda"):
        load_backbone("dlib-torch", device="cuda")


# ---- parity with dlib ----------------------------------------------------------------------------

def lfw_chips(count: int) -> np.ndarray:
    """Aligned chips of the first image of the first ``count`` LFW people (sorted) with a detection."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(model_file(DLIB_LANDMARKS_5)))
    chips = []
    for person in sorted(p for p in LFW_IMAGES.iterdir() if p.is_dir()):
        image = dlib.load_rgb_image(str(min(person.glob("*.jpg"))))
        detections = detector(image, 1)
        if detections:
            face = max(detections, key=lambda rect: rect.area())
            chips.append(dlib.get_face_chip(image, landmarks(image, face), size=150, padding=0.25))
            if len(chips) == count:
                break
    return np.stack(chips)


@pytest.mark.slow
def test_embeddings_match_dlib_on_lfw_chips(cache_folder):
    require(LFW_IMAGES)
    import dlib

    chips = lfw_chips(PARITY_CHIPS)
    assert len(chips) == PARITY_CHIPS
    reference_model = dlib.face_recognition_model_v1(str(model_file(DLIB_RESNET)))
    reference = np.array([np.asarray(reference_model.compute_face_descriptor(chip)) for chip in chips])
    ours = load_backbone("dlib-torch", device="cpu").embed_chips(chips)
    assert ours.shape == (PARITY_CHIPS, 128) and ours.dtype == np.float32
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.9999, f"lowest cosine similarity {cosine.min():.6f}"
    assert np.abs(ours - reference).max() <= 1e-3, f"largest difference {np.abs(ours - reference).max():.2e}"
