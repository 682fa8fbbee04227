"""Export facenet-pytorch's MTCNN networks (PNet, RNet, ONet) to the ONNX files kface ships.

``python -m kface.build.mtcnn_onnx`` writes ``kface/models/mtcnn/{pnet,rnet,onet}.onnx`` and
``kface/models/mtcnn/mtcnn.json`` (each file's sha256, the source weights' sha256, facenet-pytorch's,
torch's and onnx's versions, the opset). :mod:`kface.faces.mtcnn` runs them with onnxruntime and checks the
sha256 before use; ``tests/test_pipeline.py`` checks the boxes against facenet-pytorch's MTCNN.
"""
from __future__ import annotations

import argparse
import json
from importlib import metadata
from pathlib import Path

from ..models import MODELS_DIR
from ..util.hashing import file_sha256
from ..util.outputs import atomic_path, write_json

OUT_DIR = MODELS_DIR / "mtcnn"
OPSET = 17
#: Input shape used to trace each network; PNet runs on every pyramid scale, so H and W are dynamic.
TRACE_SHAPES = {"pnet": (1, 3, 48, 64), "rnet": (1, 3, 24, 24), "onet": (1, 3, 48, 48)}
OUTPUTS = {"pnet": ["reg", "prob"], "rnet": ["reg", "prob"], "onet": ["reg", "landmarks", "prob"]}


def export(out_dir: Path = OUT_DIR) -> dict:
    """Export the three networks into ``out_dir``; returns the card written beside them."""
    import facenet_pytorch
    import onnx
    import torch
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_dir = Path(facenet_pytorch.__file__).resolve().parent / "data"
    files = {}
    for name, network in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
        network.eval()
        dynamic = {0: "batch", 2: "height", 3: "width"} if name == "pnet" else {0: "batch"}
        outputs = OUTPUTS[name]
        target = out_dir / f"{name}.onnx"
        with atomic_path(target, suffix=".onnx") as tmp, torch.no_grad():
            torch.onnx.export(network, torch.zeros(TRACE_SHAPES[name]), str(tmp), input_names=["image"],
                              output_names=outputs, opset_version=OPSET, dynamo=False,
                              dynamic_axes={"image": dynamic, **{o: {0: "batch"} for o in outputs}})
        files[name] = {"file": target.name, "sha256": file_sha256(target),
                       "source_weights": f"facenet_pytorch/data/{name}.pt",
                       "source_sha256": file_sha256(weights_dir / f"{name}.pt")}
    card = {"format": "kface-mtcnn", "description": "facenet-pytorch's MTCNN (PNet, RNet, ONet) exported to ONNX",
            "made_by": "python -m kface.build.mtcnn_onnx", "opset": OPSET,
            "versions": {"facenet_pytorch": metadata.version("facenet-pytorch"),
                         "torch": torch.__version__, "onnx": onnx.__version__},
            "networks": files}
    write_json(out_dir / "mtcnn.json", card)
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder [default: kface/models/mtcnn]")
    args = parser.parse_args()
    card = export(args.out)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
