"""dlib's ResNet face descriptor as a PyTorch module (backbone ``dlib-torch``).

The network is dlib's ``dnn_face_recognition_ex`` ResNet: a 7x7/2 convolution with 32 filters and a
3x3/2 max pool, then residual stages of 32, 64, 128 and 256 filters, a global average pool and a
128-d fully connected layer without bias. Batch norm is folded into frozen per-channel affine layers.
Weights come from ``dlib_face_recognition_resnet_model_v1.dat`` (face_recognition_models); the
conversion runs once and is cached as a torch state dict keyed by the file's sha256.

Training can cut the network in two (:data:`~kface.backbones.cuts.CUT_POINTS`, see
:class:`~kface.backbones.cut_points.CutPointNetwork`): run the frozen prefix once and train the suffix
(the fc layer, the last residual block, the last stage, or everything).
"""
from __future__ import annotations

import copy
import os
import pickle
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.dlib_files import DLIB_RESNET, model_file
from ..util.cache import cache_dir
from ..util.devices import resolve_device
from ..util.hashing import file_sha256
from .cut_points import CutPointNetwork
from .cuts import CUT_POINTS  # noqa: F401  (re-exported: the cut points DlibResNet accepts)
from .dlib_format import FC_NO_BIAS, DlibFormatError, DlibNetwork, LayerRecord, read_network

CHIP_SIZE = 150
EMBEDDING_SIZE = 128
#: dlib's input layer divides the mean-subtracted pixel values by this.
PIXEL_SCALE = 256.0
BATCH_SIZE = 64
#: Channels per stage, and for each block whether it halves the resolution.
STAGE_LAYOUT: tuple[tuple[int, tuple[bool, ...]], ...] = (
    (32, (False, False, False)),
    (64, (True, False, False, False)),
    (128, (True, False, False)),
    (256, (True, False, False, True)),
)
#: Bump when the module's parameter layout changes, so old cached conversions are not loaded.
CONVERSION_VERSION = 1


class FrozenAffine(nn.Module):
    """dlib's ``affine_`` layer: y = gamma * x + beta per channel (batch norm folded; never trained)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def add_zero_extended(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: sum two maps of possibly different shapes.

    The result has the larger channel count, height and width of the two; the smaller operand is
    zero-extended at the end of the channel axis and at the bottom and right.
    """
    if a.shape == b.shape:
        return a + b
    channels, height, width = (max(a.shape[d], b.shape[d]) for d in (1, 2, 3))

    def extend(t: torch.Tensor) -> torch.Tensor:
        # F.pad counts from the last axis: (left, right, top, bottom, front, back).
        return F.pad(t, (0, width - t.shape[3], 0, height - t.shape[2], 0, channels - t.shape[1]))

    return extend(a) + extend(b)


class ResidualBlock(nn.Module):
    """relu(f(x) + shortcut(x)) with f = affine(conv3x3(relu(affine(conv3x3(x))))).

    A down-sampling block strides its first convolution by 2 (no padding, as dlib does) and
    average-pools the shortcut 2x2/2; channels and borders that differ are zero-filled.
    """

    def __init__(self, in_channels: int, channels: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=padding)
        self.affine1 = FrozenAffine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = FrozenAffine(channels)
        self.shortcut = nn.AvgPool2d(2, stride=2) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_zero_extended(residual, self.shortcut(x)))


class GlobalAveragePool(nn.Module):
    """dlib's ``avg_pool_everything``: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class DlibResNet(CutPointNetwork):
    """dlib's face ResNet. Parts: ``stem``, ``stages`` (4 Sequentials of :class:`ResidualBlock`),
    ``pool``, ``fc``. :meth:`forward` takes normalised NCHW float input (see :meth:`prepare_chips`)
    and returns the raw 128-d descriptor (not L2-normalised, as dlib returns it).
    """

    pixel_scale = PIXEL_SCALE

    def __init__(self) -> None:
        super().__init__()
        # dlib's per-channel means (red, green, blue); overwritten by the converted weights.
        self.register_buffer("input_mean", torch.zeros(3))
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 7, stride=2, padding=0),
            FrozenAffine(32),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=0),
        )
        stages = []
        in_channels = 32
        for channels, downsamples in STAGE_LAYOUT:
            blocks = []
            for downsample in downsamples:
                blocks.append(ResidualBlock(in_channels, channels, downsample))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = GlobalAveragePool()
        self.fc = nn.Linear(in_channels, EMBEDDING_SIZE, bias=False)

    def prepare_chips(self, chips: torch.Tensor) -> torch.Tensor:
        """(N, 150, 150, 3) uint8 RGB chips -> the network's input, as dlib's input layer makes it:
        NCHW float32, (pixel - channel mean) / 256."""
        x = chips.permute(0, 3, 1, 2).to(self.input_mean.device, torch.float32)
        return (x - self.input_mean.view(1, 3, 1, 1)) / self.pixel_scale

    def _steps(self) -> list[nn.Module]:
        return [self.stem, *(block for stage in self.stages for block in stage), self.pool, self.fc]

    def _suffix_lengths(self) -> dict[str, int]:
        # fc alone; the last block, pool and fc; the last stage's blocks, pool and fc.
        return {"fc": 1, "last-block": 3, "last-stage": 2 + len(self.stages[-1])}

    def for_inference(self) -> "DlibResNet":
        """Affine layers folded into the convolutions: same function, about twice as fast."""
        return fold_affine(self)


def fold_affine(net: DlibResNet) -> DlibResNet:
    """An inference copy of ``net`` with each affine layer merged into the convolution before it.

    Same function (to float rounding) at about half the CPU time, since the per-channel multiply and
    add no longer run as separate passes over the feature maps. Training keeps the unfolded network:
    folding rescales the convolution weights, so their gradients would differ from dlib's.
    """
    folded = copy.deepcopy(net)

    def merge(conv: nn.Conv2d, affine: FrozenAffine) -> None:
        conv.weight.mul_(affine.weight.view(-1, 1, 1, 1))
        conv.bias.mul_(affine.weight).add_(affine.bias)

    with torch.no_grad():
        merge(folded.stem[0], folded.stem[1])
        folded.stem[1] = nn.Identity()
        for stage in folded.stages:
            for block in stage:
                merge(block.conv1, block.affine1)
                merge(block.conv2, block.affine2)
                block.affine1, block.affine2 = nn.Identity(), nn.Identity()
    return folded


# ---- conversion from dlib's records ------------------------------------------------------------

def _dlib_layer_order(net: DlibResNet) -> Iterator[tuple[str, Optional[nn.Module]]]:
    """(record kind, module) in the order dlib stores the records; None where the record has no weights."""
    conv, affine, _, max_pool = net.stem
    yield from [("con", conv), ("affine", affine), ("relu", None), ("max_pool", max_pool)]
    for stage in net.stages:
        for block in stage:
            yield from [("con", block.conv1), ("affine", block.affine1), ("relu", None),
                        ("con", block.conv2), ("affine", block.affine2)]
            if block.downsample:
                yield "avg_pool", block.shortcut
            yield from [("add_prev", None), ("relu", None)]
    yield from [("avg_pool", net.pool), ("fc", net.fc)]


def _mismatch(record: LayerRecord, what: str) -> DlibFormatError:
    return DlibFormatError(f"dlib layer {record.record} at byte {record.offset} does not fit dlib's face "
                           f"ResNet: {what}")


def _check(record: LayerRecord, expected: dict) -> None:
    found = {name: record.settings.get(name) for name in expected}
    if found != expected:
        raise _mismatch(record, f"expected {expected}, found {found}")


def _load_conv(record: LayerRecord, conv: nn.Conv2d) -> None:
    out_channels, in_channels, height, width = conv.weight.shape
    _check(record, {"num_filters": out_channels, "nr": height, "nc": width,
                    "stride_y": conv.stride[0], "stride_x": conv.stride[1],
                    "padding_y": conv.padding[0], "padding_x": conv.padding[1],
                    "use_bias": True, "use_relu": False})
    params = record.arrays["params"].reshape(-1)
    n_weights = conv.weight.numel()
    if params.size != n_weights + out_channels:
        raise _mismatch(record, f"{params.size} parameters for a {tuple(conv.weight.shape)} convolution")
    # dlib's filter layout (num_filters, k, nr, nc) is torch's; both compute a cross-correlation.
    conv.weight.copy_(torch.from_numpy(params[:n_weights].reshape(conv.weight.shape)))
    conv.bias.copy_(torch.from_numpy(params[n_weights:]))


def _load_affine(record: LayerRecord, affine: FrozenAffine) -> None:
    _check(record, {"mode": 0, "disabled": False})  # 0 = per-channel (CONV_MODE)
    params = record.arrays["params"].reshape(-1)
    channels = affine.weight.numel()
    if params.size != 2 * channels:
        raise _mismatch(record, f"{params.size} parameters for {channels} channels")
    affine.weight.copy_(torch.from_numpy(params[:channels]))
    affine.bias.copy_(torch.from_numpy(params[channels:]))


def _check_pool(record: LayerRecord, pool: nn.Module) -> None:
    if isinstance(pool, GlobalAveragePool):
        # dlib stores "pool everything" as a 0x0 window.
        _check(record, {"nr": 0, "nc": 0, "padding_y": 0, "padding_x": 0})
        return
    _check(record, {"nr": pool.kernel_size, "nc": pool.kernel_size, "stride_y": pool.stride,
                    "stride_x": pool.stride, "padding_y": pool.padding, "padding_x": pool.padding})


def _load_fc(record: LayerRecord, fc: nn.Linear) -> None:
    _check(record, {"num_outputs": fc.out_features, "num_inputs": fc.in_features,
                    "bias_mode": FC_NO_BIAS, "use_bias": False})
    params = record.arrays["params"].reshape(-1)
    if params.size != fc.weight.numel():
        raise _mismatch(record, f"{params.size} parameters for a {fc.in_features}x{fc.out_features} layer")
    # dlib computes out = in @ W with W stored (num_inputs, num_outputs); torch's weight is W transposed.
    fc.weight.copy_(torch.from_numpy(params.reshape(fc.in_features, fc.out_features).T.copy()))


def network_from_records(network: DlibNetwork) -> DlibResNet:
    """Build a :class:`DlibResNet` holding the weights of a decoded dlib network.

    Every record is checked against the module (kind, shape, stride, padding), so a different
    architecture is a :class:`DlibFormatError` instead of a silently wrong network.
    """
    net = DlibResNet()
    _check(network.input, {"nr": CHIP_SIZE, "nc": CHIP_SIZE})
    expected = list(_dlib_layer_order(net))
    if len(expected) != len(network.layers):
        raise DlibFormatError(f"the dlib file has {len(network.layers)} layers; dlib's face ResNet has "
                              f"{len(expected)}")
    with torch.no_grad():
        net.input_mean.copy_(torch.tensor([network.input.settings[name]
                                           for name in ("avg_red", "avg_green", "avg_blue")]))
        for record, (kind, module) in zip(network.layers, expected):
            if record.kind != kind:
                raise _mismatch(record, f"expected a {kind} layer here")
            if kind == "con":
                _load_conv(record, module)
            elif kind == "affine":
                _load_affine(record, module)
            elif kind in ("max_pool", "avg_pool"):
                _check_pool(record, module)
            elif kind == "fc":
                _load_fc(record, module)
            elif kind == "relu":
                _check(record, {"disabled": False})
    return net


# ---- cached loading ----------------------------------------------------------------------------

def conversion_cache_file(dat_path: Union[str, Path]) -> Path:
    """Where the converted state dict of ``dat_path`` is cached (keyed by the file's sha256)."""
    return cache_dir() / "dlib-torch" / f"resnet-v{CONVERSION_VERSION}-{file_sha256(dat_path)}.pt"


def _save_atomically(state: dict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp_file:
            torch.save(state, temp_file)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_dlib_resnet(dat_path: Optional[Union[str, Path]] = None) -> DlibResNet:
    """dlib's face ResNet with the weights of ``dat_path`` (default: face_recognition_models' copy), on CPU.

    The first call for a given file converts it and caches the state dict; later calls load the cache.
    A cache that cannot be read (e.g. an interrupted copy) is converted again.
    """
    path = Path(dat_path) if dat_path is not None else model_file(DLIB_RESNET)
    if not path.is_file():
        raise InputError(f"dlib model file not found: {path}")
    cache_file = conversion_cache_file(path)
    net = DlibResNet()
    if cache_file.is_file():
        try:
            net.load_state_dict(torch.load(cache_file, map_location="cpu", weights_only=True))
            return net.eval()
        except (RuntimeError, EOFError, pickle.UnpicklingError):
            pass  # unreadable or from another layout: convert again below
    net = network_from_records(read_network(path))
    try:
        _save_atomically(net.state_dict(), cache_file)
    except OSError:
        pass  # a read-only cache folder only costs the conversion time on the next load
    return net.eval()


def pretrained_network(spec, weights: Optional[str] = None) -> DlibResNet:
    """The registry's network builder (:mod:`.trainable`): dlib's weights (or ``weights``), unfolded."""
    return load_dlib_resnet(weights)


def empty_network(spec) -> DlibResNet:
    """The registry's network builder: the layout alone, untrained, in eval mode."""
    return DlibResNet().eval()


class DlibTorchBackbone:
    """Backbone ``dlib-torch``: dlib's descriptor computed by :class:`DlibResNet`, batched, CPU or GPU."""

    def __init__(self, spec, device: str = "auto", weights: Optional[str] = None):
        self.name = spec.name
        self.spec = spec
        self.device = torch.device(resolve_device(device))
        # Chips arrive NHWC, so the input is already channels-last; keeping the whole network
        # channels-last avoids layout conversions around every convolution.
        network = fold_affine(load_dlib_resnet(weights))
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 RGB aligned chips (``dlib.get_face_chip``) -> (N, 128) float32."""
        chips = np.asarray(chips)
        expected = (CHIP_SIZE, CHIP_SIZE, 3)
        if chips.ndim != 4 or chips.shape[1:] != expected or chips.dtype != np.uint8:
            raise InputError(f"{self.name} takes (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) uint8 RGB chips, "
                             f"got {chips.dtype} {chips.shape}")
        embeddings = np.empty((len(chips), EMBEDDING_SIZE), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(chips), BATCH_SIZE):
                batch = torch.from_numpy(np.ascontiguousarray(chips[start:start + BATCH_SIZE]))
                output = self.network(self.network.prepare_chips(batch.to(self.device)))
                embeddings[start:start + len(batch)] = output.cpu().numpy()
        return embeddings
