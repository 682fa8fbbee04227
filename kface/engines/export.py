"""Export PyTorch face networks to ONNX: chips (uint8 NHWC) in, vectors out (see :mod:`kface.engines`).

- :class:`ChipGraph` wraps a :class:`~kface.backbones.cut_points.CutPointNetwork` with everything
  between an aligned chip and the vector a distance is measured on: the network's own preprocessing,
  flip averaging, the float16 rounding of a cached prefix (what a tuned suffix trained on), and a head.
- :func:`export_onnx` writes any such module to an ONNX file atomically (dynamic batch axis; with
  ``fp16`` the weights are stored as float16 and cast back to float32 once, when the session loads).
- :func:`write_network_then_head` writes an ONNX network file's graph with a traced head's after it.
- :class:`BaseEnsembleGraph` concatenates a tuned graph's vector with the untuned network's embedding.
- :func:`check_parity` compares a module with its exported file on given chips.

Imports torch: used when exporting, never when an exported file runs (:mod:`.runtime`). A ``kface train``
checkpoint is exported by :mod:`kface.training.export`, which builds its graph with these parts.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..util.hashing import file_sha256
from ..util.outputs import atomic_path
from .graph_names import INPUT_NAME, OUTPUT_NAME
from .runtime import OnnxNetwork, compare_vectors

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
            **chip_graph_io(chip_size, dim, output_name), "fp16": bool(fp16), "opset": OPSET}


def chip_graph_io(chip_size: int, dim: int, output_name: str = OUTPUT_NAME) -> dict:
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
    with torch.no_grad():
        reference = module.eval()(torch.from_numpy(np.ascontiguousarray(chips))).numpy().astype(np.float64)
    exported = OnnxNetwork(path, device="cpu").run(chips)
    parity = compare_vectors(reference, exported)
    return {key: parity[key] for key in ("max_abs_diff", "min_cosine", "chips")}


def write_network_then_head(network_file: Path, head: nn.Module, example: torch.Tensor, path: Path,
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
