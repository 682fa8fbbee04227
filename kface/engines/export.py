"""Export PyTorch face networks to ONNX: chips (uint8 NHWC) in, vectors out (see :mod:`kface.engines`).

- :class:`ChipGraph` wraps a :class:`~kface.backbones.cut_points.CutPointNetwork` with everything
  between an aligned chip and the vector a distance is measured on: the network's own preprocessing,
  flip averaging, the float16 rounding of a cached prefix (what a tuned suffix trained on), and a head.
- :func:`export_onnx` writes any such module to an ONNX file atomically (dynamic batch axis; with
  ``fp16`` the weights are stored as float16 and cast back to float32 once, when the session loads).
- :func:`export_checkpoint` does it for a ``kface train`` checkpoint (``runs/NAME/model.pt``) and
  returns what it wrote (sha256, size, input and output spec, parity against the PyTorch path); a head
  trained on a shipped ONNX network's frozen vectors is written as that network's graph with the head's
  after it.
- :class:`BaseEnsembleGraph` concatenates a tuned graph's vector with the untuned network's embedding.
- :func:`check_parity` compares a module with its exported file on given chips.

Imports torch: used when exporting, never when an exported file runs (:mod:`.runtime`).
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..hashing import file_sha256
from ..outputs import atomic_path
from .graph_names import INPUT_NAME, OUTPUT_NAME

#: ONNX opset of exported files (onnxruntime >= 1.14 runs it).
OPSET = 17
#: Weights smaller than this stay float32 with ``fp16`` (biases, affine vectors: nothing to save).
FP16_MIN_ELEMENTS = 1024
#: Seeded chips the export checks parity on (real-face parity is in tests/test_engines.py).
PARITY_CHIPS = 8
PARITY_SEED = 0


class ChipGraph(nn.Module):
    """(N, S, S, 3) uint8 RGB chips -> (N, D) float32: the whole chip-to-vector path of one model.

    Args:
        network: a :class:`~kface.backbones.cut_points.CutPointNetwork` in eval mode (for inference,
            dlib's affine layers folded: :func:`~kface.backbones.trainable.inference_network`).
        cut: where a cached prefix ends (``fc``, ``last-block``, ``last-stage``): the prefix output is
            rounded to float16 there, as the feature store held it when the suffix trained. ``none``
            and ``all`` run the network straight through.
        flip: average the vectors of each chip and its mirror image (``--tta flip``).
        head: applied to the (averaged) vector; None for the backbone's own embedding.
    """

    def __init__(self, network: nn.Module, cut: str = "none", flip: bool = False, head: Optional[nn.Module] = None):
        super().__init__()
        self.network = network
        self.cut = cut
        self.flip = flip
        self.head = head if head is not None else nn.Identity()

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.head(self.vectors_and_prefix(chips)[0])

    def vectors_and_prefix(self, chips: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The (flip-averaged) vectors before the head, and the unflipped chips' frozen-prefix output
        (None where the network runs straight through), which :class:`BaseEnsembleGraph` reuses."""
        count = chips.shape[0]
        if self.flip:
            chips = torch.cat([chips, torch.flip(chips, dims=[2])])  # NHWC: dims 2 is left-right
        x = self.network.prepare_chips(chips)
        prefix = None
        if self.cut in ("none", "all"):
            vectors = self.network(x)
        else:
            prefix = self.network.forward_prefix(x, self.cut)
            vectors = self.network.forward_suffix(prefix.to(torch.float16).float(), self.cut)
            prefix = prefix[:count]
        if self.flip:
            vectors = (vectors[:count] + vectors[count:]) / 2
        return vectors, prefix


class BaseEnsembleGraph(nn.Module):
    """A tuned :class:`ChipGraph`'s vector concatenated with ``base_weight`` x the untuned network's
    embedding, both from one run of the frozen prefix they share: ``(N, D) -> (N, D + D_base)``.

    The base vector comes from the unflipped chip and the unrounded prefix, exactly as the base
    backbone computes it alone; the tuned part is the graph's own (flip averaging, float16 prefix).
    """

    def __init__(self, tuned: ChipGraph, base: nn.Module, base_weight: float):
        super().__init__()
        if tuned.cut in ("none", "all"):
            raise InputError(f"an ensemble with the base network needs a frozen prefix; the tuned graph is cut at "
                             f"{tuned.cut!r}")
        self.tuned = tuned
        self.base = base
        self.base_weight = float(base_weight)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        vectors, prefix = self.tuned.vectors_and_prefix(chips)
        base = self.base.forward_suffix(prefix, self.tuned.cut)
        return torch.cat([self.tuned.head(vectors), self.base_weight * base], dim=1)


def _fp16_weights(model) -> None:
    """Store ``model``'s large float32 initialisers as float16, each read through one Cast to float32.

    onnxruntime folds the casts when the session loads, so the network computes in float32 from
    weights rounded to float16: half the file, the same speed.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    casts = []
    for initializer in graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(initializer)
        if values.size < FP16_MIN_ELEMENTS:
            continue
        name = initializer.name
        half_name = f"{name}__fp16"
        initializer.CopyFrom(numpy_helper.from_array(values.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [name], to=onnx.TensorProto.FLOAT, name=f"{name}__cast"))
    for index, node in enumerate(casts):  # before every consumer: keeps the node list topologically sorted
        graph.node.insert(index, node)


def _trace_to_onnx(module: nn.Module, example: torch.Tensor, path: Union[str, os.PathLike], input_name: str,
                   output_name: str) -> None:
    """Trace ``module`` on ``example`` into an ONNX file, its batch axis dynamic."""
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter: one self-contained file, shapes static but for the batch axis (its
        # warnings that shape checks become constants say just that, and that it is deprecated in favour
        # of the torch.export-based exporter).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def export_onnx(module: nn.Module, path: Union[str, os.PathLike], chip_size: int, fp16: bool = False,
                metadata: Optional[dict] = None, output_name: str = OUTPUT_NAME) -> dict:
    """Export ``module`` (uint8 (N, chip_size, chip_size, 3) chips -> (N, D) float32) to ``path``, atomically.

    The batch axis is dynamic. ``fp16`` stores large weights as float16 (computation stays float32).
    ``metadata`` (str -> str) goes into the file's metadata_props; ``output_name`` names the output (a face
    network's is ``embeddings``). Returns ``{sha256, size_bytes, input, output, fp16, opset}``.
    """
    import onnx

    module = module.eval()
    example = torch.zeros(2, chip_size, chip_size, 3, dtype=torch.uint8)
    with torch.no_grad():
        dim = int(module(example).shape[1])
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as temp:
        _trace_to_onnx(module, example, temp, INPUT_NAME, output_name)
        model = onnx.load(str(temp))
        if fp16:
            _fp16_weights(model)
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        model.producer_name = "kface"
        onnx.checker.check_model(model)
        onnx.save(model, str(temp))
    return {"sha256": file_sha256(path), "size_bytes": path.stat().st_size,
            **_chip_graph_io(chip_size, dim, output_name), "fp16": bool(fp16), "opset": OPSET}


def _chip_graph_io(chip_size: int, dim: int, output_name: str = OUTPUT_NAME) -> dict:
    """``{input, output}``: how an exported chip graph is called, as its card records it."""
    return {"input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", chip_size, chip_size, 3],
                      "layout": "NHWC RGB aligned chips"},
            "output": {"name": output_name, "dtype": "float32", "shape": ["batch", dim]}}


def parity_chips(chip_size: int, count: int = PARITY_CHIPS, seed: int = PARITY_SEED) -> np.ndarray:
    """Seeded smooth random chips: a numeric check of an export (tests check real faces)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(count, chip_size // 10 + 1, chip_size // 10 + 1, 3)).astype(np.float32)
    chips = np.repeat(np.repeat(coarse, 10, axis=1), 10, axis=2)[:, :chip_size, :chip_size]
    return np.clip(chips + rng.normal(0, 12, chips.shape), 0, 255).astype(np.uint8)


def check_parity(module: nn.Module, path: Union[str, os.PathLike], chips: np.ndarray) -> dict:
    """``{max_abs_diff, min_cosine, chips}`` between ``module`` and its ONNX file ``path`` on ``chips``."""
    from .runtime import OnnxNetwork, compare_vectors

    with torch.no_grad():
        reference = module.eval()(torch.from_numpy(np.ascontiguousarray(chips))).numpy().astype(np.float64)
    exported = OnnxNetwork(path, device="cpu").run(chips)
    parity = compare_vectors(reference, exported)
    return {key: parity[key] for key in ("max_abs_diff", "min_cosine", "chips")}


# -- checkpoints ---------------------------------------------------------------------------------------
def checkpoint_graph(checkpoint: dict, weights: Optional[str] = None) -> ChipGraph:
    """The :class:`ChipGraph` of a loaded ``kface train`` checkpoint: its backbone with the tuned layers
    in place, its cut, flip averaging and head, computing what ``verify --engine torch`` computes.

    ``weights``: the backbone's weights file where the checkpoint names one (checked by the caller).
    """
    from ..backbones import TRAINABLE_BACKBONES, trainable_backbone
    from ..backbones.suffix import ChipInput
    from ..backbones.trainable import inference_network, load_network
    from ..training.checkpoints import pair_model_from_checkpoint

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
    from ..backbones import SHIPPED_NETWORK_MODULE, get_spec, trainable_backbone
    from ..backbones.trainable import inference_network, load_network
    from ..training.checkpoints import checkpoint_weights_file, load_checkpoint

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
    from ..backbones import get_spec
    from ..models import network_card, network_path
    from ..training.checkpoints import pair_model_from_checkpoint
    from .runtime import OnnxNetwork, compare_vectors

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
    _write_network_then_head(shipped_file, head, example, onnx_path, {
        "kface_checkpoint_sha256": checkpoint_sha, "kface_backbone": checkpoint["backbone"],
        "kface_backbone_file_sha256": variant["sha256"], "kface_cut": "none", "kface_distance": checkpoint["distance"]})
    chips = parity_chips(spec.input_size)
    with torch.no_grad():
        vectors = torch.from_numpy(OnnxNetwork(shipped_file, device="cpu").run(chips))
        reference = head(vectors).numpy().astype(np.float64)
    parity = compare_vectors(reference, OnnxNetwork(onnx_path, device="cpu").run(chips))
    return {"sha256": file_sha256(onnx_path), "size_bytes": onnx_path.stat().st_size,
            **_chip_graph_io(spec.input_size, dim), "fp16": variant is card and bool(card["format"].get("fp16")),
            "opset": OPSET, "checkpoint_sha256": checkpoint_sha,
            "backbone_file": {"file": variant["file"], "sha256": variant["sha256"]},
            "backbone": checkpoint["backbone"], "cut": "none", "tta": features["tta"],
            "head": checkpoint["head"]["kind"], "distance": checkpoint["distance"], "base_weight": None,
            "parity": {key: parity[key] for key in ("max_abs_diff", "min_cosine", "chips")}}


def _write_network_then_head(network_file: Path, head: nn.Module, example: torch.Tensor, path: Path,
                             metadata: dict) -> None:
    """One ONNX file at ``path`` (atomically): ``network_file``'s graph, its output fed to ``head`` traced on
    ``example`` vectors."""
    import onnx
    from onnx import compose

    with atomic_path(path, suffix=".onnx") as temp:
        head_file = Path(f"{temp}.head")
        try:
            _trace_to_onnx(head, example, head_file, "vectors", OUTPUT_NAME)
            head_model = onnx.load(str(head_file))
        finally:
            head_file.unlink(missing_ok=True)
        network = compose.add_prefix(onnx.load(str(network_file)), "network/", rename_inputs=False)
        head_model = compose.add_prefix(head_model, "head/", rename_outputs=False)
        head_model.ir_version = network.ir_version
        model = compose.merge_models(network, head_model,
                                     io_map=[(network.graph.output[0].name, head_model.graph.input[0].name)])
        # merge_models lists each graph's opset imports: one per domain, the highest version.
        opsets: dict[str, int] = {}
        for opset in model.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
        del model.opset_import[:]
        model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())
        del model.metadata_props[:]
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        model.producer_name = "kface"
        onnx.checker.check_model(model)
        onnx.save(model, str(temp))
