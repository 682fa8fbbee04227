"""Self-describing model checkpoints: everything ``kface verify --model`` needs, in one file.

A model checkpoint (``runs/NAME/model.pt``) holds:

- ``backbone``, ``weights`` (path and sha256, for backbones that take a weights file), ``features``
  (the :class:`~kface.training.store.FeatureSpec`: cut point, test-time augmentation, face settings, and the
  feature shape);
- ``head``: its kind, the cut point, the embedding size, the loss it was trained with, ``dims`` (the
  output size of a closed-form head's LDA projection, else None) and the state dict of the whole
  :class:`~kface.training.model.PairModel` (trainable backbone layers, head with any fitted projection,
  probability mapping);
- ``distance``; ``threshold`` ``{value, rule, split, note}`` (chosen on the val split unless
  rewritten by :func:`save_threshold`); ``metrics`` (val, at the saved epoch) and ``epoch``;
- ``val_distances`` ``{split, epoch, distances, labels}``: the model's distance for every val pair
  (float32) and its label (1 = same), as measured in the saved epoch, for ``kface serve``'s plot.
  Optional: checkpoints written before it was added have none (:func:`stored_val_distances`);
- ``config`` (every training setting), ``seed``, ``data`` (pair file, counts, dropped pairs) and
  ``versions`` (kface, torch, numpy, python).

Only tensors, numbers, strings, lists and dicts are stored, so every file loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

if TYPE_CHECKING:  # annotations only: torch loads when a checkpoint is read or written
    import torch

from ..backbones import get_spec
from ..embeddings.embedder import shipped_variant
from ..errors import InputError
from ..util.hashing import file_sha256  # noqa: F401  (re-exported: callers record files by it)
from ..util.outputs import atomic_path
from ..util.versions import versions  # noqa: F401  (re-exported: checkpoints record it)

FORMAT = "kface-model"
FORMAT_VERSION = 1


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays, tuples and paths turned into what ``weights_only`` loads."""
    if isinstance(value, dict):
        return {str(key) if isinstance(key, Path) else key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(path: os.PathLike, payload: dict, durable: bool = False) -> None:
    """Write ``payload`` with ``torch.save``, atomically (a temp file in the same folder, then a rename);
    ``durable``: fsynced, file and folder (see :func:`kface.util.outputs.atomic_path`)."""
    import torch

    # Written through a handle: given a path, torch names the archive's records after the (random) temp file,
    # and the same payload would never be the same bytes twice.
    with atomic_path(path, suffix=".pt", durable=durable) as temp, open(temp, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: os.PathLike, expected: str = FORMAT) -> dict:
    """Load a kface checkpoint with ``weights_only=True`` (on the CPU) and check what it is."""
    path = Path(path)
    payload = read_checkpoint(path, "not a readable kface checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != expected:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{path}: expected a {expected} checkpoint, found {found!r}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"{path}: written by a newer kface (format {payload['format_version']}); upgrade kface")
    problem = (model_problem if expected == FORMAT else state_problem if expected == STATE_FORMAT else None)
    found = problem(payload) if problem is not None else None
    if found:
        raise InputError(f"{path}: damaged or foreign {expected} checkpoint ({found})")
    return payload


def read_checkpoint(path: os.PathLike, unreadable: str) -> Any:
    """What ``torch.load(weights_only=True)`` reads from ``path`` on the CPU; a missing file, or one torch
    cannot read (``unreadable``: how the message says so), is an :class:`InputError`."""
    import torch  # here, not at the top: a cached ONNX export serves verify without torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file" if not path.exists() else f"{path}: not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InputError(f"{path}: {unreadable} ({type(exc).__name__}: {str(exc)[:200]})") from None


STATE_FORMAT = "kface-train-state"
#: The largest embedding or projection a checkpoint may declare: sizes build layers before any weight is
#: read, so a crafted file could otherwise ask for terabytes. Real backbones give 128 or 512.
MAX_EMBEDDING_SIZE = 8192
#: The most values a stored feature row may declare (a cut point's activation map; dlib's largest is 150×150×32).
MAX_FEATURE_VALUES = 4_000_000


def model_problem(payload: dict) -> Optional[str]:
    """What is wrong with a loaded kface-model payload's structure (None when it can be used).

    Checks keys, types and bounded sizes, so that building the model from it cannot fail with a raw
    KeyError nor allocate without bound; the state's tensor shapes are checked when it is loaded
    (:func:`pair_model_from_checkpoint`)."""
    import torch

    for key, kind in (("backbone", str), ("features", dict), ("head", dict), ("distance", str),
                      ("threshold", dict)):
        if not isinstance(payload.get(key), kind):
            return f"'{key}' missing or not a {kind.__name__}"
    head, features = payload["head"], payload["features"]
    for key, kind in (("kind", str), ("cut", str), ("loss", str), ("state", dict)):
        if not isinstance(head.get(key), kind):
            return f"'head.{key}' missing or not a {kind.__name__}"
    problem = _bounded_int(head.get("embedding_size"), "head.embedding_size", MAX_EMBEDDING_SIZE)
    if problem is None and head.get("dims") is not None:
        problem = _bounded_int(head["dims"], "head.dims", MAX_EMBEDDING_SIZE)
    if problem:
        return problem
    if not all(isinstance(value, torch.Tensor) for value in head["state"].values()):
        return "'head.state' holds something other than tensors"
    for key in ("cut", "tta", "detector", "upsample", "fallback", "shape"):
        if key not in features:
            return f"'features.{key}' missing"
    shape = features["shape"]
    if (not isinstance(shape, (list, tuple)) or not shape
            or any(_bounded_int(size, "size", MAX_FEATURE_VALUES) for size in shape)
            or int(np.prod(shape)) > MAX_FEATURE_VALUES):
        return f"'features.shape' is not a plausible feature shape ({str(shape)[:80]})"
    value = payload["threshold"].get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
        return "'threshold.value' missing or not a finite number"
    return None


def state_problem(payload: dict) -> Optional[str]:
    """What is wrong with a loaded kface-train-state payload's structure (None when it can be used)."""
    for key, kind in (("epoch", int), ("config", dict), ("pairs_sha256", str), ("model", dict),
                      ("optimizer", dict), ("scheduler", dict), ("scaler", dict), ("history", list)):
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            return f"'{key}' missing or not a {kind.__name__}"
    if payload["epoch"] < 0:
        return "'epoch' is negative"
    best = payload.get("best_model")
    if best is not None:
        if not isinstance(best, dict) or best.get("format") != FORMAT:
            return "'best_model' is not a kface-model checkpoint"
        problem = model_problem(best)
        if problem:
            return f"best_model: {problem}"
    return None


def _bounded_int(value, name: str, limit: int) -> Optional[str]:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        return f"'{name}' is {str(value)[:40]!r}, not a whole number from 1 to {limit}"
    return None


def threshold_record(threshold) -> dict:
    """``{value, rule, split, note}`` from a :class:`kface.metrics.Threshold`, its ``to_dict()``, or this form."""
    if hasattr(threshold, "value") and hasattr(threshold, "rule"):
        return {"value": float(threshold.value), "rule": str(threshold.rule), "split": threshold.split,
                "note": threshold.note}
    if isinstance(threshold, dict):
        value = threshold.get("value", threshold.get("threshold"))
        if value is None or "rule" not in threshold:
            raise InputError(f"a threshold needs a value and a rule; got {sorted(threshold)}")
        return {"value": float(value), "rule": str(threshold["rule"]),
                "split": threshold.get("split", threshold.get("threshold_chosen_on")),
                "note": threshold.get("note", threshold.get("threshold_note"))}
    raise InputError(f"not a threshold: {threshold!r}")


#: Facts of how one run got its features, not of what it was trained on: kept in ``history.json`` only,
#: so that the same training run again (warm store or cold) writes the same checkpoint bytes.
RUN_STATE = ("computed", "feature_store")


def model_checkpoint(config, model: torch.nn.Module, feature_shape, embedding_size: int, threshold, metrics: dict,
                     epoch: int, data: dict, val_distances: Optional[np.ndarray] = None,
                     val_labels: Optional[np.ndarray] = None) -> dict:
    """The model checkpoint of a :class:`~kface.training.model.PairModel` trained with ``config`` (a TrainConfig)
    on features of ``feature_shape`` whose embeddings (the head's input) have ``embedding_size`` values.

    ``val_distances`` and ``val_labels``: the model's distance and the label of every val pair at
    ``epoch`` (stored as ``val_distances``; left out when not given).
    """
    spec = config.feature_spec()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": config.backbone,
        "weights": {"path": os.path.abspath(config.weights), "sha256": file_sha256(config.weights)}
        if config.weights else None,
        "features": {**spec.to_dict(), "shape": [int(size) for size in feature_shape],
                     **_shipped_network_record(config.backbone, config.device)},
        "head": {"kind": config.head, "cut": config.unfreeze, "embedding_size": int(embedding_size),
                 "loss": config.loss, "dims": _projection_dims(model),
                 "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
        "distance": config.distance,
        "threshold": threshold_record(threshold),
        "metrics": plain(metrics),
        "epoch": int(epoch),
        **({} if val_distances is None else
           {"val_distances": val_distances_record(val_distances, val_labels, epoch)}),
        "config": plain(config.to_dict()),
        "seed": int(config.seed),
        "data": plain({key: value for key, value in data.items() if key not in RUN_STATE}),
        "versions": versions(),
    }


def _shipped_network_record(backbone: str, device: str) -> dict:
    """``{"network": {precision, sha256}}``: which copy of a shipped network made the features a head
    trained on (on a CPU, the int8 copy), so its export runs that same file; empty for other backbones."""
    variant = shipped_variant(get_spec(backbone), device)
    return {} if variant is None else {"network": {"precision": variant["precision"], "sha256": variant["sha256"]}}


def val_distances_record(distances: np.ndarray, labels: np.ndarray, epoch: int) -> dict:
    """``{split, epoch, distances, labels}``: val pairs' distances (float32) and labels (0/1) as plain lists."""
    distances = np.asarray(distances, dtype=np.float32)
    labels = np.asarray(labels)
    if distances.shape != labels.shape or distances.ndim != 1:
        raise ValueError(f"one label per distance needed; got shapes {distances.shape} and {labels.shape}")
    return {"split": "val", "epoch": int(epoch), "distances": distances.tolist(),
            "labels": labels.astype(np.int64).tolist()}


def stored_val_distances(checkpoint: dict) -> Optional[tuple[np.ndarray, np.ndarray, dict]]:
    """(distances, labels, record) of the val pairs a checkpoint stores, or None for one without them
    (written before they were stored)."""
    record = checkpoint.get("val_distances")
    if not record:
        return None
    distances = np.asarray(record["distances"], dtype=np.float64)
    labels = np.asarray(record["labels"], dtype=np.int64)
    if distances.shape != labels.shape:
        raise InputError(f"damaged checkpoint: {distances.size} val distances but {labels.size} labels")
    return distances, labels, record


def _projection_dims(model: torch.nn.Module) -> Optional[int]:
    from .heads import lda_head_of

    projection = lda_head_of(model.head)
    return None if projection is None else int(projection.projection.shape[1])


def pair_model_from_checkpoint(checkpoint: dict):
    """The :class:`~kface.training.model.PairModel` of a loaded checkpoint, in eval mode on the CPU."""
    from .model import build_pair_model

    head = checkpoint["head"]
    model = build_pair_model(head["kind"], head["embedding_size"], checkpoint["distance"], head["cut"], head["loss"],
                             backbone=checkpoint["backbone"], dims=head.get("dims"))
    load_state(model, head["state"], "the checkpoint's head")
    return model.eval()


def load_state(module, state: dict, what: str) -> None:
    """``module.load_state_dict(state)``, with missing, unexpected or misshapen tensors an InputError."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise InputError(f"{what} does not fit the model it describes ({first})") from None


def checkpoint_weights_file(checkpoint: dict, model) -> Optional[str]:
    """The backbone weights file a checkpoint was trained with (None for the packaged weights), checked
    by sha256."""
    weights = checkpoint.get("weights")
    if not weights:
        return None
    path = weights["path"]
    if not os.path.isfile(path):
        raise InputError(f"{model} needs its backbone weights file {path}, which is missing")
    if file_sha256(path) != weights["sha256"]:
        raise InputError(f"{path} changed since {model} was trained (sha256 differs)")
    return path


def save_threshold(path: Union[str, os.PathLike], threshold) -> dict:
    """Rewrite the model checkpoint at ``path`` with a new threshold, atomically; return the stored record.

    ``threshold`` is a :class:`kface.metrics.Threshold`, its ``to_dict()``, or ``{value, rule, split, note}``.
    """
    checkpoint = load_checkpoint(path)
    checkpoint["threshold"] = threshold_record(threshold)
    save_checkpoint(path, checkpoint)
    return checkpoint["threshold"]
