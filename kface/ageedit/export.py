"""Exporting a trained age editor to ONNX (the averaged weights of a ``kface train-age-editor`` checkpoint)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..engines.runtime import OnnxNetwork
from ..errors import InputError
from ..util.hashing import file_sha256
from ..util.outputs import atomic_path

OPSET = 17
INPUTS = ("chips", "target")
OUTPUTS = ("edited", "reconstruction", "probabilities")
PARITY_SEED = 0


def load_editor(checkpoint: os.PathLike):
    """The averaged (exported) editor of a training checkpoint, in eval mode on the CPU."""
    import torch

    from .network import CHECKPOINT_FORMAT, AgeEditor, EditorShape

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise InputError(f"{checkpoint}: no such checkpoint") from None
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds on a damaged file)
        raise InputError(f"{checkpoint}: unreadable checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{checkpoint}: not an age editor checkpoint (kface train-age-editor)")
    editor = AgeEditor(EditorShape(**state["shape"]))
    editor.load_state_dict(state["ema"])
    return editor.eval(), state


def export_editor(checkpoint: os.PathLike, out: os.PathLike) -> dict:
    """Write the checkpoint's averaged editor to ``out`` as ONNX (atomically, batch axis dynamic); returns
    ``{sha256, size_bytes, size, inputs, outputs, opset, parity}``, parity being the largest pixel and
    probability difference from torch on seeded chips."""
    import onnx
    import torch

    from .network import ExportedEditor

    editor, state = load_editor(checkpoint)
    graph = ExportedEditor(editor).eval()
    size = editor.shape.size
    example = (torch.zeros(2, size, size, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    out = Path(out)
    with atomic_path(out, suffix=".onnx") as temp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (as kface.engines.export): shapes fixed but for the batch axis.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, example, str(temp), input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes={name: {0: "batch"} for name in INPUTS + OUTPUTS}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
        model = onnx.load(str(temp))
        model.producer_name = "kface"
        onnx.checker.check_model(model)
        onnx.save(model, str(temp))
    return {"sha256": file_sha256(out), "size_bytes": out.stat().st_size, "size": size,
            "inputs": {"chips": f"uint8 (N, {size}, {size}, 3) RGB aligned chips", "target": "int64 (N,) age class"},
            "outputs": {"edited": "float32 (N, S, S, 3) pixels 0..255 at the target class",
                        "reconstruction": "float32 (N, S, S, 3) pixels 0..255 at the class the classifier gives",
                        "probabilities": "float32 (N, 8) the input's age class probabilities"},
            "opset": OPSET, "parity": check_parity(graph, out), "step": state["step"]}


def check_parity(graph, path: Path, count: int = 8) -> dict:
    """Largest differences between ``graph`` (torch) and its ONNX file on seeded random chips."""
    import torch

    size = graph.editor.shape.size
    rng = np.random.default_rng(PARITY_SEED)
    chips = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    targets = rng.integers(0, 8, size=count).astype(np.int64)
    with torch.no_grad():
        reference = [t.numpy() for t in graph(torch.from_numpy(chips), torch.from_numpy(targets))]
    exported = OnnxNetwork(path, device="cpu").session.run(None, {"chips": chips, "target": targets})
    return {"chips": count, "max_pixel_diff": float(np.abs(reference[0] - exported[0]).max()),
            "max_probability_diff": float(np.abs(reference[2] - exported[2]).max())}
