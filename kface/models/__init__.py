"""The face models that ship inside kface, by name: their cards, files and checksums (``kface models``).

``dlib`` is dlib's stock ResNet descriptor (``face_recognition_models``) at its LFW-measured threshold.
``korean`` is dlib's network with its last stage tuned on Korean family-album faces by kface's own
commands (see ``kface/build/__main__.py``); it is the default once its file is present. Each shipped
network is an ONNX file beside a JSON card holding its provenance, recipe, threshold and measured figures;
the file's sha256 is checked against the card before it is used.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError, KfaceError
from ..util.hashing import file_sha256
from .dlib_files import DLIB_RESNET, model_file

MODELS_DIR = Path(__file__).resolve().parent
STOCK_MODEL = "dlib"
#: Thresholds for untrained backbones (Euclidean distance), by backbone family, each with where it comes from.
#: dlib-resnet: the max-accuracy threshold over LFW View-2's 6,000 official pairs (deep-funneled, HOG +
#: 5-point alignment, whole-image fallback), measured by `kface benchmark lfw` (docs/evaluation.md):
#: 0.6144 (every one of the ten nine-fold thresholds was 0.6144 or 0.6150; 10-fold accuracy 98.23%).
BASE_THRESHOLDS: dict[str, tuple[float, str]] = {
    "dlib-resnet-v1": (0.6144, "measured on LFW View-2 (max-accuracy over the 6,000 official pairs)"),
}
#: Backbone family -> the card of the ONNX network that ships for it (in this folder).
NETWORK_CARDS = {"dlib-resnet-v1": "dlib-resnet-v1.json", "kface-korean-v4": "korean-v4.json"}
#: Shipped model name -> the backbone family it runs; its network card is also the model card
#: (threshold, face settings, recipe, figures).
MODEL_FAMILIES = {"korean": "kface-korean-v4"}


#: ``KFACE_PRECISION``: which copy of a shipped network runs where a card has an int8 one (see
#: :func:`network_variant`); ``auto`` (int8 on the CPU, float on a GPU), ``float`` or ``int8``.
PRECISION_VARIABLE = "KFACE_PRECISION"
PRECISIONS = ("auto", "float", "int8")


def network_card(family: str) -> dict:
    """The card of the network shipped for backbone ``family`` (its file is checked by :func:`network_path`
    and again by :class:`~kface.engines.runtime.OnnxNetwork` before a session is created)."""
    if family not in NETWORK_CARDS:
        raise KfaceError(f"no ONNX network ships for {family!r}; shipped: {', '.join(sorted(NETWORK_CARDS))}")
    return _read_card(NETWORK_CARDS[family])


@lru_cache(maxsize=None)
def _read_card(file: str) -> dict:
    path = MODELS_DIR / file
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KfaceError(f"{path}: the shipped card is unreadable ({exc}); reinstall kface") from None


def checked_card(card_file: Path, what: str, instead: str) -> dict:
    """A shipped network's card read from ``card_file``, its file present with the card's sha256; else one
    :class:`KfaceError` naming ``what`` is shipped and ``instead``, what a user may pass in its place."""
    try:
        body = json.loads(card_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KfaceError(f"{card_file}: the shipped {what} is not installed; reinstall kface, "
                         f"or pass {instead}") from None
    except (OSError, ValueError) as exc:
        raise KfaceError(f"{card_file}: the shipped {what}'s card is unreadable ({exc}); reinstall kface") from None
    network = card_file.parent / body["file"]  # a network ships beside its card
    if not network.is_file():
        raise KfaceError(f"{network}: the shipped {what} file is missing; reinstall kface")
    check_sha256(network, body["sha256"])
    return body


def check_sha256(path: Path, sha256: str) -> None:
    """Refuse a shipped file whose content is not the one its card records."""
    if file_sha256(path) != sha256:
        raise KfaceError(f"{path}: sha256 differs from its card; the file is damaged, reinstall kface")


def has_network(family: str) -> bool:
    """Whether the card and the network file for ``family`` are installed."""
    if family not in NETWORK_CARDS or not (MODELS_DIR / NETWORK_CARDS[family]).is_file():
        return False
    return (MODELS_DIR / network_card(family)["file"]).is_file()


def network_path(family: str, check: bool = False, variant: Optional[dict] = None) -> Path:
    """The network file shipped for ``family`` (its float file, or ``variant`` from :func:`network_variant`);
    with ``check``, its sha256 is compared with the card's."""
    body = variant or network_card(family)
    path = MODELS_DIR / body["file"]
    if not path.is_file():
        raise KfaceError(f"{path}: the shipped network file is missing; reinstall kface")
    if check:
        check_sha256(path, body["sha256"])
    return path


@contextmanager
def precision(value: str) -> Iterator[None]:
    """Run shipped networks at ``value`` (``KFACE_PRECISION``: float, int8 or auto) inside the block."""
    before = os.environ.get(PRECISION_VARIABLE)
    os.environ[PRECISION_VARIABLE] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[PRECISION_VARIABLE]
        else:
            os.environ[PRECISION_VARIABLE] = before


def network_variant(family: str, device: str = "auto") -> dict:
    """Which copy of ``family``'s shipped network runs on ``device``: ``{precision, file, sha256}``.

    Where the card ships an int8 copy (``int8``: same model, quantised; about twice as fast on a CPU,
    its figures in the card) it runs on the CPU; the float file runs on a GPU (``cuda``, or ``auto`` with
    an onnxruntime build that has CUDA), and wherever ``KFACE_PRECISION=float``. Decided without
    importing onnxruntime, so the embedding cache's keys cost nothing.
    """
    body = network_card(family)
    wanted = os.environ.get(PRECISION_VARIABLE, "auto") or "auto"
    if wanted not in PRECISIONS:
        raise InputError(f"{PRECISION_VARIABLE}={wanted}: choose one of {', '.join(PRECISIONS)}")
    int8 = body.get("int8")
    if wanted == "int8" and int8 is None:
        raise InputError(f"{PRECISION_VARIABLE}=int8: no int8 copy ships for {family}")
    on_gpu = device.startswith("cuda") or (device == "auto" and _onnxruntime_has_cuda())
    if int8 is not None and (wanted == "int8" or (wanted == "auto" and not on_gpu)):
        return {"precision": "int8", "file": int8["file"], "sha256": int8["sha256"]}
    return {"precision": "float", "file": body["file"], "sha256": body["sha256"]}


def shipped_threshold(name: str, device: str = "auto") -> tuple[float, str]:
    """The 1:1 threshold of shipped model ``name`` for the copy that runs on ``device``, and its source.

    Each copy's threshold is chosen by the same rule on its own distances (quantisation moves them a
    little); a card whose int8 block has none uses the float file's.
    """
    body = card(name)
    chosen, copy = body["threshold"], ""
    if network_variant(MODEL_FAMILIES[name], device)["precision"] == "int8" and "threshold" in body["int8"]:
        chosen, copy = body["int8"]["threshold"], ", int8 copy"
    return float(chosen["value"]), f"{name} model card{copy}: {chosen['source']}"


def _onnxruntime_has_cuda() -> bool:
    """Whether the installed onnxruntime is a build with the CUDA provider (onnxruntime-gpu), found by its
    library file rather than by importing it."""
    spec = find_spec("onnxruntime")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return any(Path(folder, "capi", "libonnxruntime_providers_cuda.so").is_file() for folder in folders)


def shipped_names() -> list[str]:
    """Every model name ``--model`` accepts besides a checkpoint path (a model only counts where it ships)."""
    return sorted({STOCK_MODEL, *(name for name, family in MODEL_FAMILIES.items() if has_network(family))})


def default_model() -> str:
    """The model used when none is named: the Korean model where it ships, else stock dlib."""
    return "korean" if has_network(MODEL_FAMILIES["korean"]) else STOCK_MODEL


def is_shipped(name: Optional[str]) -> bool:
    return name in shipped_names()


def card(name: str) -> dict:
    """The card of shipped model ``name``."""
    if name not in MODEL_FAMILIES:
        raise KfaceError(f"no card for model {name!r}; shipped models: {', '.join(shipped_names())}")
    return network_card(MODEL_FAMILIES[name])


def describe(name: str) -> dict:
    """What ``kface models`` shows of one model: its card, or for stock dlib the descriptor file's facts."""
    if name == STOCK_MODEL:
        path = model_file(DLIB_RESNET)
        value, source = BASE_THRESHOLDS["dlib-resnet-v1"]
        return {"name": STOCK_MODEL, "description": "dlib's stock ResNet face descriptor (web photos, mostly "
                "Western adults), from the face_recognition_models package", "file": str(path),
                "size_bytes": path.stat().st_size, "sha256": file_sha256(path), "distance": "euclidean",
                "threshold": {"value": value, "rule": "max-accuracy", "source": source},
                **({"answers": network_card("dlib-resnet-v1")["answers"]} if has_network("dlib-resnet-v1")
                   and "answers" in network_card("dlib-resnet-v1") else {})}
    family = MODEL_FAMILIES[name]
    body = dict(card(name))
    body["file"] = str(network_path(family, check=True))
    if "int8" in body:
        body["int8"] = {**body["int8"], "file": str(network_path(family, check=True, variant=body["int8"]))}
    body["runs_on_cpu"] = network_variant(family, "cpu")["precision"]
    return body
