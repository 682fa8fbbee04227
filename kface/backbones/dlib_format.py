"""Reader for dlib's binary network serialization (``dlib_face_recognition_resnet_model_v1.dat``).

dlib writes a network as nested wrapper objects: each wrapper writes its version number, then the
sub-network it wraps, then its own layer record. The file therefore holds the loss record, then one
version number per wrapper from the output inwards, then the input record and the layer records in
forward (input -> output) order. Tag and skip wrappers write a version number and nothing else.

This module only decodes bytes into plain numbers and numpy arrays; mapping them onto a torch
network is :mod:`kface.backbones.dlib_torch`'s job. Only the record versions that face networks use
are understood; anything else is a :class:`DlibFormatError` naming the record and the byte offset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np

from ..errors import InputError

Setting = Union[int, float, bool, str, tuple]

#: Wrapper version numbers: tag/skip wrappers write 1, add_layer writes 2, and the innermost
#: add_layer (the one that owns the input layer) writes 3.
TAG_OR_SKIP_VERSION = 1
LAYER_VERSION = 2
INPUT_LAYER_VERSION = 3

#: fc_ bias_mode values: FC_HAS_BIAS = 0, FC_NO_BIAS = 1.
FC_HAS_BIAS = 0
FC_NO_BIAS = 1

_TENSOR_VERSION = 2
_ALIAS_TENSOR_VERSION = 1
#: float_details exponents that stand for the special values.
_SPECIAL_EXPONENTS = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}


class DlibFormatError(InputError):
    """A .dat file that is truncated, corrupt, or holds a record this reader does not know."""


@dataclass
class LayerRecord:
    """One decoded layer record.

    ``kind`` is the layer type without its version suffix (``con``, ``affine``, ``relu``,
    ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``, ``input_rgb_image_sized``, ``loss_metric``);
    ``record`` the exact version string from the file; ``arrays`` the tensors (float32 numpy,
    shaped as dlib stores them); ``settings`` the scalar fields by name.
    """

    kind: str
    record: str
    offset: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, Setting] = field(default_factory=dict)


@dataclass
class DlibNetwork:
    """A decoded network: its loss and input records and its layers in forward order."""

    loss: LayerRecord
    input: LayerRecord
    layers: list[LayerRecord]
    #: Wrapper version numbers as stored, outermost (output side) first.
    wrapper_versions: list[int]

    def count(self, kind: str) -> int:
        """Number of layers of ``kind``."""
        return sum(layer.kind == kind for layer in self.layers)


class ByteStream:
    """dlib's primitive encodings over an in-memory copy of the file."""

    def __init__(self, data: bytes, source: str):
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    def error(self, message: str, at: int | None = None) -> DlibFormatError:
        return DlibFormatError(f"{self.source}: {message} (byte {self.pos if at is None else at})")

    def take(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise self.error(f"file ends early: needed {size} more bytes")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def int(self) -> int:
        """A control byte (bit 7 = negative, low 4 bits = byte count), then the little-endian magnitude."""
        control = self.take(1)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise self.error(f"invalid integer control byte 0x{control:02x}", self.pos - 1)
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def bool(self) -> bool:
        value = self.take(1).tobytes()
        if value not in (b"0", b"1"):
            raise self.error(f"invalid bool byte {value!r}", self.pos - 1)
        return value == b"1"

    def string(self) -> str:
        length = self.int()
        if length < 0 or length > 4096:
            raise self.error(f"implausible string length {length}")
        try:
            return self.take(length).tobytes().decode("ascii")
        except UnicodeDecodeError:
            raise self.error("string is not ASCII", self.pos - length) from None

    def float(self) -> float:
        """dlib's float_details: signed mantissa first, then exponent (value = mantissa * 2**exponent)."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            # dlib's older text format for floats; no shipped face model uses it.
            raise self.error("float in dlib's old ASCII format is not supported")
        mantissa = self.int()
        exponent = self.int()
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        return math.ldexp(float(mantissa), exponent)

    def expect_version(self, what: str, expected: int) -> None:
        at = self.pos
        version = self.int()
        if version != expected:
            raise self.error(f"{what} has version {version}, expected {expected}", at)

    def tensor(self) -> np.ndarray:
        """A resizable_tensor: version, dims (n, k, nr, nc), then raw little-endian float32 values."""
        self.expect_version("tensor", _TENSOR_VERSION)
        shape = tuple(self.int() for _ in range(4))
        if min(shape) < 0:
            raise self.error(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        """An alias_tensor: a view's shape, no data."""
        self.expect_version("alias_tensor", _ALIAS_TENSOR_VERSION)
        return tuple(self.int() for _ in range(4))

    def peek_input_record(self) -> bool:
        """Whether the next bytes are a string naming an input layer (where the wrapper versions end)."""
        saved = self.pos
        try:
            return self.string().startswith("input")
        except DlibFormatError:
            return False
        finally:
            self.pos = saved


# ---- layer records ---------------------------------------------------------------------------

def _read_multipliers(stream: ByteStream, settings: dict[str, Setting]) -> None:
    for name in ("learning_rate_multiplier", "weight_decay_multiplier",
                 "bias_learning_rate_multiplier", "bias_weight_decay_multiplier"):
        settings[name] = stream.float()


def _read_con(stream: ByteStream, record: LayerRecord) -> None:
    record.arrays["params"] = stream.tensor()
    for name in ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
        record.settings[name] = stream.int()
    record.settings["filters_shape"] = stream.alias_tensor()
    record.settings["biases_shape"] = stream.alias_tensor()
    _read_multipliers(stream, record.settings)
    record.settings["use_bias"] = stream.bool() if record.record in ("con_5", "con_6") else True
    record.settings["use_relu"] = stream.bool() if record.record == "con_6" else False


def _read_affine(stream: ByteStream, record: LayerRecord) -> None:
    record.arrays["params"] = stream.tensor()
    record.settings["gamma_shape"] = stream.alias_tensor()
    record.settings["beta_shape"] = stream.alias_tensor()
    record.settings["mode"] = stream.int()
    record.settings["disabled"] = stream.bool() if record.record == "affine_2" else False


def _read_relu(stream: ByteStream, record: LayerRecord) -> None:
    record.settings["disabled"] = stream.bool() if record.record == "relu_2" else False


def _read_pool(stream: ByteStream, record: LayerRecord) -> None:
    for name in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
        record.settings[name] = stream.int()


def _read_nothing(stream: ByteStream, record: LayerRecord) -> None:
    """Records whose behaviour lives entirely in the C++ type (add_prev's tag number)."""


def _read_fc(stream: ByteStream, record: LayerRecord) -> None:
    record.settings["num_outputs"] = stream.int()
    record.settings["num_inputs"] = stream.int()
    record.arrays["params"] = stream.tensor()
    record.settings["weights_shape"] = stream.alias_tensor()
    record.settings["biases_shape"] = stream.alias_tensor()
    record.settings["bias_mode"] = stream.int()
    _read_multipliers(stream, record.settings)
    # fc_2 has no use_bias flag; its bias_mode alone says whether a bias row follows the weights.
    has_bias_row = record.settings["bias_mode"] == FC_HAS_BIAS
    record.settings["use_bias"] = stream.bool() if record.record == "fc_3" else has_bias_row


def _read_input_rgb_sized(stream: ByteStream, record: LayerRecord) -> None:
    for name in ("avg_red", "avg_green", "avg_blue"):
        record.settings[name] = stream.float()
    record.settings["nr"] = stream.int()
    record.settings["nc"] = stream.int()


def _read_loss_metric(stream: ByteStream, record: LayerRecord) -> None:
    record.settings["margin"] = stream.float()
    record.settings["distance_threshold"] = stream.float()


#: record version string -> (kind, payload reader)
_RECORDS: dict[str, tuple[str, Callable[[ByteStream, LayerRecord], None]]] = {
    **{name: ("con", _read_con) for name in ("con_4", "con_5", "con_6")},
    **{name: ("affine", _read_affine) for name in ("affine_", "affine_2")},
    **{name: ("relu", _read_relu) for name in ("relu_", "relu_2")},
    "max_pool_2": ("max_pool", _read_pool),
    "avg_pool_2": ("avg_pool", _read_pool),
    "add_prev_": ("add_prev", _read_nothing),
    **{name: ("fc", _read_fc) for name in ("fc_2", "fc_3")},
    "input_rgb_image_sized": ("input_rgb_image_sized", _read_input_rgb_sized),
    "loss_metric_2": ("loss_metric", _read_loss_metric),
}


def _read_record(stream: ByteStream) -> LayerRecord:
    offset = stream.pos
    name = stream.string()
    if name not in _RECORDS:
        raise stream.error(f"unsupported dlib layer record {name!r}", offset)
    kind, read_payload = _RECORDS[name]
    record = LayerRecord(kind=kind, record=name, offset=offset)
    read_payload(stream, record)
    return record


def _read_layer_trailer(stream: ByteStream, wrapper_version: int) -> None:
    """The add_layer state after a record: flags and gradient buffers, all empty in a saved model."""
    for _ in range(3):  # setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
        stream.bool()
    names = ["x_grad", "cached_output"]
    names += ["grad_final"] if wrapper_version == INPUT_LAYER_VERSION else ["params_grad"]
    for name in names:
        at = stream.pos
        if stream.tensor().size:
            raise stream.error(f"add_layer {name} holds data; expected an empty tensor", at)
    if wrapper_version == INPUT_LAYER_VERSION:
        at = stream.pos
        factor = stream.int()
        if factor != 1:
            raise stream.error(f"sample_expansion_factor is {factor}, expected 1", at)


def read_network(path: Union[str, Path]) -> DlibNetwork:
    """Decode a dlib network file into its records, layers in forward order.

    Raises :class:`DlibFormatError` if the file is truncated, has bytes left over, or holds
    records or wrapper versions this reader does not understand.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read dlib model {path}: {exc.strerror or exc}") from None
    stream = ByteStream(data, path.name)

    stream.expect_version("loss wrapper", 1)
    loss = _read_record(stream)

    wrapper_versions: list[int] = []
    while not stream.peek_input_record():
        at = stream.pos
        version = stream.int()
        if version not in (TAG_OR_SKIP_VERSION, LAYER_VERSION, INPUT_LAYER_VERSION):
            raise stream.error(f"unsupported wrapper version {version}", at)
        wrapper_versions.append(version)
    if not wrapper_versions or wrapper_versions[-1] != INPUT_LAYER_VERSION:
        raise stream.error("the innermost wrapper is not an input-owning add_layer (version 3)")
    # Tag/skip wrappers write no record, so the records pair with the add_layer wrappers, innermost first.
    layer_wrappers = [v for v in reversed(wrapper_versions) if v != TAG_OR_SKIP_VERSION]
    if INPUT_LAYER_VERSION in layer_wrappers[1:]:
        raise stream.error("more than one input-owning wrapper")

    input_record = _read_record(stream)
    if input_record.kind != "input_rgb_image_sized":
        raise stream.error(f"unsupported input layer {input_record.record!r}", input_record.offset)
    layers = []
    for wrapper_version in layer_wrappers:
        layers.append(_read_record(stream))
        _read_layer_trailer(stream, wrapper_version)
    if stream.pos != len(data):
        raise stream.error(f"{len(data) - stream.pos} bytes left after the last layer record")
    return DlibNetwork(loss=loss, input=input_record, layers=layers, wrapper_versions=wrapper_versions)
