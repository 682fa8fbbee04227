"""A ``kface train`` checkpoint to ONNX: its whole chip -> vector path in one file (see :mod:`kface.engines`).

:func:`export_checkpoint` writes a checkpoint (``runs/NAME/model.pt``) as an ONNX file atomically and
returns what it wrote (sha256, size, input and output spec, parity against the PyTorch path); a head
trained on a shipped ONNX network's frozen vectors is written as that network's graph with the head's
after it. Imports torch: used when exporting, never when an exported file runs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..backbones import SHIPPED_NETWORK_MODULE, TRAINABLE_BACKBONES, get_spec, trainable_backbone
from ..backbones.suffix import ChipInput
from ..backbones.trainable import inference_network, load_network
from ..engines.export import (
    OPSET,
    BaseEnsembleGraph,
    ChipGraph,
    check_parity,
    chip_graph_io,
    export_onnx,
    parity_chips,
    write_network_then_head,
)
from ..engines.runtime import OnnxNetwork, compare_vectors
from ..errors import InputError
from ..models import network_card, network_path
from ..util.hashing import file_sha256
from .checkpoints import checkpoint_weights_file, load_checkpoint, pair_model_from_checkpoint


# -- checkpoints ---------------------------------------------------------------------------------------
def checkpoint_graph(checkpoint: dict, weights: Optional[str] = None) -> ChipGraph:
    """The :class:`ChipGraph` of a loaded ``kface train`` checkpoint: its backbone with the tuned layers
    in place, its cut, flip averaging and head, computing what ``verify --engine torch`` computes.

    ``weights``: the backbone's weights file where the checkpoint names one (checked by the caller).
    """

    # dlib-resnet and dlib-native: the same network as dlib-torch, exported from the port.
    backbone = trainable_backbone(checkpoint["backbone"])
    if backbone not in TRAINABLE_BACKBONES:
        raise InputError(f"exporting a checkpoint needs a PyTorch backbone ({', '.join(TRAINABLE_BACKBONES)}); "
                         f"this one was trained on {backbone}")
    features = checkpoint["features"]
    cut = features["cut"]
    pair_model = pair_model_from_checkpoint(checkpoint)
    network = load_network(backbone, weights)
    if pair_model.suffix is not None:
        tuned = [module for module in pair_model.suffix if not isinstance(module, ChipInput)]
        targets = network.suffix_modules(cut)
        if len(tuned) != len(targets):
            raise InputError(f"the checkpoint's tuned layers ({len(tuned)}) do not fit {backbone} cut at {cut} "
                             f"({len(targets)} steps)")
        with torch.no_grad():
            for target, module in zip(targets, tuned):
                target.load_state_dict(module.state_dict())
    return ChipGraph(inference_network(network).eval(), cut, flip=features["tta"] == "flip",
                     head=pair_model.head.eval())


def export_checkpoint(model_pt_path: Union[str, os.PathLike], onnx_path: Union[str, os.PathLike],
                      fp16: bool = False, base_weight: Optional[float] = None) -> dict:
    """Export the chip -> vector path of a ``kface train`` checkpoint to ``onnx_path``, atomically.

    The graph takes (N, S, S, 3) uint8 RGB chips (S = the backbone's chip size, cut by dlib's 5-point
    alignment) and returns the vectors the checkpoint's distance is measured on; with ``base_weight``,
    those concatenated with ``base_weight`` x the untuned network's embedding (:class:`BaseEnsembleGraph`).
    Returns ``{sha256, size_bytes, input, output, fp16, opset, checkpoint_sha256, backbone, cut, tta, head,
    distance, base_weight, parity}`` (``parity``: against the PyTorch module on seeded chips, see
    :func:`check_parity`).
    """

    checkpoint = load_checkpoint(model_pt_path)
    if get_spec(checkpoint["backbone"]).module == SHIPPED_NETWORK_MODULE and \
            trainable_backbone(checkpoint["backbone"]) == checkpoint["backbone"]:
        if base_weight is not None:
            raise InputError(f"a base ensemble needs a PyTorch backbone; this checkpoint's is {checkpoint['backbone']}")
        return _export_head_on_shipped(checkpoint, file_sha256(model_pt_path), onnx_path)
    weights = checkpoint_weights_file(checkpoint, model_pt_path)
    graph = checkpoint_graph(checkpoint, weights)
    if base_weight is not None:
        base = inference_network(load_network(trainable_backbone(checkpoint["backbone"]), weights)).eval()
        graph = BaseEnsembleGraph(graph, base, base_weight)
    chip_size = get_spec(checkpoint["backbone"]).input_size
    checkpoint_sha = file_sha256(model_pt_path)
    features = checkpoint["features"]
    info = export_onnx(graph, onnx_path, chip_size, fp16=fp16,
                       metadata={"kface_checkpoint_sha256": checkpoint_sha, "kface_backbone": checkpoint["backbone"],
                                 "kface_cut": features["cut"], "kface_distance": checkpoint["distance"]})
    info.update({"checkpoint_sha256": checkpoint_sha, "backbone": checkpoint["backbone"], "cut": features["cut"],
                 "tta": features["tta"], "head": checkpoint["head"]["kind"], "distance": checkpoint["distance"],
                 "base_weight": base_weight, "parity": check_parity(graph, onnx_path, parity_chips(chip_size))})
    return info


def _export_head_on_shipped(checkpoint: dict, checkpoint_sha: str, onnx_path: Union[str, os.PathLike]) -> dict:
    """A head trained on a shipped ONNX network's frozen vectors (``kface train --backbone kface-korean-v4``),
    exported as one file: the graph of the shipped copy the head trained on, with the head's graph after it,
    so the checkpoint runs with no torch like any other. Returns what :func:`export_checkpoint` returns."""

    features = checkpoint["features"]
    spec = get_spec(checkpoint["backbone"])
    card = network_card(spec.family)
    if features["cut"] != "none":
        raise InputError(f"{checkpoint['backbone']} is an ONNX network: only heads on its frozen vectors "
                         f"(cut none) can be exported, not cut {features['cut']}")
    if features["tta"] == "flip" and card["format"].get("tta") != "flip":
        raise InputError(f"{checkpoint['backbone']}'s file does no flip averaging; this checkpoint wants it")
    # The copy whose vectors the head trained on (int8 on a CPU); the float file where it is not recorded
    # (a checkpoint of an earlier kface) or is no longer shipped.
    trained_on = features.get("network", {}).get("sha256")
    variant = card.get("int8") if card.get("int8", {}).get("sha256") == trained_on else card
    if trained_on not in (None, variant["sha256"]):
        logging.getLogger("kface").info("%s's head trained on another file of %s (sha256 %s…); exporting it with "
                                        "the shipped float file", checkpoint_sha[:12], spec.name, trained_on[:12])
    shipped_file = network_path(spec.family, check=True, variant=variant)
    head = pair_model_from_checkpoint(checkpoint).head.eval()  # (N, D) backbone vectors -> the compared vectors
    example = torch.zeros(2, spec.embedding_size, dtype=torch.float32)
    with torch.no_grad():
        dim = int(head(example).shape[1])
    onnx_path = Path(onnx_path)
    write_network_then_head(shipped_file, head, example, onnx_path, {
        "kface_checkpoint_sha256": checkpoint_sha, "kface_backbone": checkpoint["backbone"],
        "kface_backbone_file_sha256": variant["sha256"], "kface_cut": "none", "kface_distance": checkpoint["distance"]})
    chips = parity_chips(spec.input_size)
    with torch.no_grad():
        vectors = torch.from_numpy(OnnxNetwork(shipped_file, device="cpu").run(chips))
        reference = head(vectors).numpy().astype(np.float64)
    parity = compare_vectors(reference, OnnxNetwork(onnx_path, device="cpu").run(chips))
    return {"sha256": file_sha256(onnx_path), "size_bytes": onnx_path.stat().st_size,
            **chip_graph_io(spec.input_size, dim), "fp16": variant is card and bool(card["format"].get("fp16")),
            "opset": OPSET, "checkpoint_sha256": checkpoint_sha,
            "backbone_file": {"file": variant["file"], "sha256": variant["sha256"]},
            "backbone": checkpoint["backbone"], "cut": "none", "tta": features["tta"],
            "head": checkpoint["head"]["kind"], "distance": checkpoint["distance"], "base_weight": None,
            "parity": {key: parity[key] for key in ("max_abs_diff", "min_cosine", "chips")}}
