"""Trained checkpoints through ONNX Runtime: exported on first use, cached by the checkpoint's content.

``$KFACE_CACHE_DIR/onnx/<sha256 of model.pt>.onnx`` holds the checkpoint's whole chip -> vector path
(:func:`kface.training.export.export_checkpoint`) and ``<sha256>.json`` beside it everything a verifier
needs from the checkpoint (backbone, face settings, distance, threshold, the distance -> P(same)
mapping, the ONNX file's sha256). Exporting imports torch once; every later call reads these two files
and imports no torch. Editing or retraining ``model.pt`` changes its sha256, hence its cache entry.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Union

from ..engines.runtime import OnnxNetwork
from ..util.cache import CacheSetting
from ..util.hashing import file_sha256
from ..util.outputs import write_json
from .checkpoints import load_checkpoint

#: Bump when the exported graph or the card's fields change, so old cache entries are not used.
CACHE_VERSION = 1


def cache_paths(checkpoint_sha256: str, cache: CacheSetting = CacheSetting()) -> tuple[Path, Path]:
    """(onnx file, card) of a checkpoint in ``cache``'s folder."""
    folder = cache.root / "onnx"
    stem = f"v{CACHE_VERSION}-{checkpoint_sha256}"
    return folder / f"{stem}.onnx", folder / f"{stem}.json"


def _read_card(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or interrupted: export again


def export_to_cache(model: Union[str, os.PathLike], checkpoint_sha256: str, cache: CacheSetting = CacheSetting()
                    ) -> dict:
    """Export checkpoint ``model`` into the cache (imports torch) and write its card; return the card."""
    from .export import export_checkpoint

    onnx_file, card_file = cache_paths(checkpoint_sha256, cache)
    logging.getLogger("kface").info("%s: exporting to ONNX once (cached in %s)", model, onnx_file.parent)
    exported = export_checkpoint(model, onnx_file, fp16=False)
    checkpoint = load_checkpoint(model)
    state = checkpoint["head"]["state"]
    card = {
        "checkpoint": str(model), "checkpoint_sha256": checkpoint_sha256, "onnx_sha256": exported["sha256"],
        "export": exported, "backbone": checkpoint["backbone"], "weights": checkpoint.get("weights"),
        "features": {key: checkpoint["features"][key] for key in ("detector", "upsample", "fallback", "tta", "cut")},
        "distance": checkpoint["distance"], "threshold": checkpoint["threshold"],
        # DistanceToProbability: P(same) = sigmoid(exp(log_sharpness) * (offset - distance)).
        "probability": {"offset": float(state["probability.offset"]),
                        "log_sharpness": float(state["probability.log_sharpness"])},
    }
    write_json(card_file, card)
    return card


def checkpoint_network(model: Union[str, os.PathLike], device: str = "auto", cache: CacheSetting = CacheSetting()
                       ) -> tuple[OnnxNetwork, dict]:
    """The ONNX network of checkpoint ``model`` and its card (see the module docstring), exporting it
    into ``cache``'s folder on first use (the export is kept there even with caching off: it is the file
    onnxruntime runs)."""
    checkpoint_sha = file_sha256(model)
    onnx_file, card_file = cache_paths(checkpoint_sha, cache)
    card = _read_card(card_file) if onnx_file.is_file() else None
    if card is None or card.get("checkpoint_sha256") != checkpoint_sha:
        card = export_to_cache(model, checkpoint_sha, cache)
    return OnnxNetwork(onnx_file, device=device, sha256=card["onnx_sha256"]), card
