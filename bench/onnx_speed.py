"""Network throughput on aligned chips: onnxruntime against dlib-torch and dlib-native, same run.

    .venv/bin/python bench/onnx_speed.py [--seconds 4] [--threads N] [--variants]

Chips are the sample portraits' aligned chips, tiled. Each engine runs batch 1 (one chip per call) and
batch 64 for about ``--seconds`` each, after a warm-up call; figures are faces/s and the ratios
against dlib-torch (PyTorch eager, affine layers folded, channels-last) and dlib-native (dlib's own
API, one chip at a time: its batch-64 figure is the same loop). ``--variants`` adds the file with the
other weight precision (float16 if float32 ships; exported here), fewer graph optimisations, one
thread, and spin-waiting threads (onnxruntime's default, off in kface), to show what each is worth. The usable cores
are the process's affinity mask, as
onnxruntime's threads are sized.
Targets (issue 16): >= 300 faces/s at batch 64 and >= 150 at batch 1 on this 2-core CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sample_chips() -> np.ndarray:
    from kface.build.dlib_onnx import example_chips

    return example_chips()


def throughput(embed, chips: np.ndarray, batch: int, seconds: float) -> float:
    """Faces per second of ``embed`` on batches of ``batch`` chips, timed for about ``seconds``."""
    tiled = np.concatenate([chips] * (batch // len(chips) + 1))[:batch]
    embed(tiled)  # warm-up: session / allocator set-up is not throughput
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embed(tiled)
        done += batch
    return done / (time.perf_counter() - start)


def onnx_session(path: Path, threads=None, level: str = "all", spinning: bool = False):
    import onnxruntime

    from kface.engines.runtime import OnnxNetwork, usable_cores

    if level == "all" and not spinning:
        return OnnxNetwork(path, device="cpu", threads=threads).run  # kface's own settings
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all"
                                        else onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.intra_op_num_threads = threads or usable_cores()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda chips: session.run(None, {"chips": chips})[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per engine and batch size")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: cores)")
    parser.add_argument("--variants", action="store_true", help="also the other weight precision, basic "
                        "optimisation, 1 thread")
    args = parser.parse_args()

    from kface.backbones import get_spec
    from kface.backbones.dlib_native import DlibNativeBackbone
    from kface.backbones.dlib_torch import DlibTorchBackbone
    from kface.engines.runtime import usable_cores
    from kface.engines.shipped import shipped_network
    from kface.models import network_card

    chips = sample_chips()
    shipped = shipped_network("dlib-resnet-v1", "cpu").path
    fp16 = bool(network_card("dlib-resnet-v1")["export"]["fp16"])
    precision = "fp16" if fp16 else "fp32"
    engines = {f"onnx (shipped, {precision} weights, {args.threads or usable_cores()} threads)":
               onnx_session(shipped, args.threads)}
    if args.variants:
        from kface.backbones.dlib_torch import fold_affine, load_dlib_resnet
        from kface.engines.export import ChipGraph, export_onnx

        other = Path(tempfile.mkdtemp()) / "dlib-other.onnx"
        export_onnx(ChipGraph(fold_affine(load_dlib_resnet()).eval()), other, 150, fp16=not fp16)
        engines[f"onnx, {'fp32' if fp16 else 'fp16'} weights"] = onnx_session(other, args.threads)
        engines["onnx, basic graph optimisation"] = onnx_session(shipped, args.threads, level="basic")
        engines["onnx, 1 thread"] = onnx_session(shipped, 1)
        engines["onnx, threads spin-wait (onnxruntime's default)"] = onnx_session(shipped, args.threads, spinning=True)
    engines["dlib-torch (PyTorch eager)"] = DlibTorchBackbone(get_spec("dlib-torch"), "cpu").embed_chips
    native = DlibNativeBackbone(get_spec("dlib-native"), "cpu").embed_chips

    figures = {}
    for name, embed in engines.items():
        figures[name] = (throughput(embed, chips, 1, args.seconds), throughput(embed, chips, 64, args.seconds))
    native_rate = throughput(native, chips, 8, args.seconds)  # one chip at a time inside dlib either way
    figures["dlib-native (dlib's API)"] = (native_rate, native_rate)

    torch_b1, torch_b64 = figures["dlib-torch (PyTorch eager)"]
    print(f"{len(chips)} sample chips, tiled; {usable_cores()} usable cores; ~{args.seconds:.0f} s per figure")
    print("| engine | faces/s, batch 1 | faces/s, batch 64 | b1 / dlib-torch | b64 / dlib-torch | b64 / dlib-native |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (b1, b64) in figures.items():
        print(f"| {name} | {b1:.1f} | {b64:.1f} | {b1 / torch_b1:.2f} | {b64 / torch_b64:.2f} | "
              f"{b64 / native_rate:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
