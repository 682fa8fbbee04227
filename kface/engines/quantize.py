"""Int8 copies of exported face networks: static post-training quantisation with ONNX Runtime's tools.

:func:`quantize_network` turns an exported file (chips in, vectors out; float32 or float16 weights) into
one whose convolutions and matrix products run in int8 (QDQ format: weights per output channel, signed;
activations per tensor, unsigned, their ranges calibrated on real aligned chips). On a CPU with VNNI
instructions (this project's machines) it runs about twice as fast as the float graph, from a file half
the size of the float16 one; the preprocessing, flip averaging and distances stay float32.

Calibration chips decide the activation ranges, so they must look like what users embed (aligned faces
of the population the model serves) and must not come from the data the figures are measured on.

Imports onnx and onnxruntime's quantisation tools (no torch): used when making a file, never when it runs.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError
from ..util.hashing import file_sha256
from ..util.outputs import atomic_path
from .graph_names import INPUT_NAME
from .runtime import OnnxNetwork, compare_vectors

#: Chips per calibration batch (the batch axis is dynamic; this only bounds memory).
CALIBRATION_BATCH = 16
#: How the activation ranges are chosen. MinMax (with a moving average over batches) measured as well as
#: Percentile and Entropy on the Korean model (mean cosine to the float graph 0.9996 for all three) and
#: is the quickest to calibrate.
CALIBRATION_METHOD = "MinMax"
SETTINGS = {"format": "QDQ", "weights": "int8, per output channel", "activations": "uint8, per tensor",
            "calibration": f"{CALIBRATION_METHOD} with a moving average over batches of {CALIBRATION_BATCH}",
            "operators": "Conv, MatMul, Add and the pooling between them (onnxruntime's defaults)"}


def float_weights(model) -> None:
    """Replace float16 initialisers read through one Cast (what ``export_onnx(fp16=True)`` writes) by
    float32 initialisers under the Cast's output name, so the quantiser sees the weights themselves."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    for node in list(graph.node):
        source = initializers.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if source is None or source.data_type != TensorProto.FLOAT16:
            continue
        values = numpy_helper.to_array(source).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        graph.node.remove(node)
        graph.initializer.remove(source)


class _ChipReader:
    """Calibration batches of aligned chips for onnxruntime's calibrator."""

    def __init__(self, chips: np.ndarray):
        self._batches = iter([{INPUT_NAME: np.ascontiguousarray(chips[start:start + CALIBRATION_BATCH])}
                              for start in range(0, len(chips), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self._batches, None)


def quantize_network(source: Union[str, os.PathLike], out: Union[str, os.PathLike], calibration: np.ndarray,
                     check: np.ndarray) -> dict:
    """Write an int8 copy of the exported network ``source`` to ``out`` (atomically).

    ``calibration``: (N, S, S, 3) uint8 aligned chips the activation ranges are measured on; ``check``:
    other chips the copy is compared with ``source`` on. Returns ``{sha256, size_bytes, source_sha256,
    settings, calibration_chips, parity}`` (parity: cosine and distance differences, see
    :func:`~kface.engines.runtime.compare_vectors`).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0 or len(check) == 0:
        raise InputError("quantising a network needs calibration chips and chips to check it on")
    source, out = Path(source), Path(out)
    model = onnx.load(str(source))
    float_weights(model)
    with tempfile.TemporaryDirectory(prefix="kface-quantize-") as work:
        plain, prepared = Path(work) / "float.onnx", Path(work) / "prepared.onnx"
        onnx.save(model, str(plain))
        quant_pre_process(str(plain), str(prepared))  # shape inference and folding the quantiser relies on
        with atomic_path(out) as temp:
            quantize_static(str(prepared), str(temp), _ChipReader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD),
                            extra_options={"CalibMovingAverage": True})
    reference = OnnxNetwork(source, device="cpu").run(check)
    quantized = OnnxNetwork(out, device="cpu").run(check)
    return {"sha256": file_sha256(out), "size_bytes": out.stat().st_size, "source_sha256": file_sha256(source),
            "settings": SETTINGS, "calibration_chips": int(len(calibration)),
            "parity": compare_vectors(reference, quantized)}
