"""Make the ONNX file of dlib's stock descriptor that ships as ``kface/models/dlib-resnet-v1.onnx``.

    python -m kface.build.dlib_onnx --fp32     # float32 weights (the shipped file)
    python -m kface.build.dlib_onnx            # float16 weights

dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (from face_recognition_models) is converted to the
PyTorch port (:mod:`kface.backbones.dlib_torch`), its affine layers folded, exported with
:func:`kface.engines.export.export_onnx`, and compared with dlib's own descriptor on the sample
portraits' chips. The card beside it (``dlib-resnet-v1.json``) records the source file's sha256, this
command, the kface version, the ONNX file's sha256 (checked at load) and the parity measured here.
It also saves dlib's frontal face detector as ``kface/models/dlib-frontal-face-detector.svm``, which
loads in 2 ms instead of the 0.7 s ``dlib.get_frontal_face_detector()`` takes.
"""
from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import __version__
from ..engines.runtime import OnnxNetwork
from ..faces.detect import HOG_DETECTOR_FILE, FaceFinder, FaceSettings
from ..faces.images import load_image
from ..models import MODELS_DIR, NETWORK_CARDS
from ..models.dlib_files import DLIB_RESNET, model_file
from ..util.hashing import file_sha256
from ..util.outputs import atomic_path, write_text

FAMILY = "dlib-resnet-v1"
NETWORK_FILE = MODELS_DIR / f"{FAMILY}.onnx"
CARD_FILE = MODELS_DIR / NETWORK_CARDS[FAMILY]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_chips() -> np.ndarray:
    """Aligned chips of the sample portraits in ``examples/`` (empty where the checkout has none)."""
    finder = FaceFinder(FaceSettings(detector="dlib", fallback="whole-image"), device="cpu")
    paths = sorted(p for p in EXAMPLES.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        return np.zeros((0, 150, 150, 3), np.uint8)
    return np.stack([finder.find(load_image(path), str(path)).chip for path in paths])


def dlib_parity(path: Path, chips: np.ndarray) -> dict:
    """``{max_abs_diff, min_cosine, chips}`` of the ONNX file against dlib's own descriptor."""
    import dlib

    native = dlib.face_recognition_model_v1(str(model_file(DLIB_RESNET)))
    reference = np.asarray([np.asarray(v) for v in native.compute_face_descriptor(list(chips))], dtype=np.float64)
    exported = OnnxNetwork(path, device="cpu").run(chips).astype(np.float64)
    cosine = (reference * exported).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(exported, axis=1))
    return {"max_abs_diff": float(np.abs(reference - exported).max()), "min_cosine": float(cosine.min()),
            "chips": int(len(chips)), "against": "dlib.face_recognition_model_v1 on the examples/ portraits' chips"}


def save_hog_detector() -> None:
    """Save dlib's frontal face detector where :mod:`kface.faces.detect` loads it (2 ms instead of 0.7 s)."""
    import dlib

    with atomic_path(HOG_DETECTOR_FILE, suffix=".svm") as temp:
        dlib.get_frontal_face_detector().save(str(temp))


def build(fp16: bool = True) -> dict:
    """Export dlib's stock network to :data:`NETWORK_FILE` and write :data:`CARD_FILE`; return the card."""
    from ..backbones.dlib_torch import fold_affine, load_dlib_resnet
    from ..engines.export import ChipGraph, export_onnx

    source = model_file(DLIB_RESNET)
    graph = ChipGraph(fold_affine(load_dlib_resnet(source)).eval())
    source_sha = file_sha256(source)
    exported = export_onnx(graph, NETWORK_FILE, 150, fp16=fp16,
                           metadata={"kface_source": DLIB_RESNET, "kface_source_sha256": source_sha})
    chips = example_chips()
    card = {
        "name": FAMILY, "file": NETWORK_FILE.name, "sha256": exported["sha256"], "size_bytes": exported["size_bytes"],
        "description": "dlib's ResNet face descriptor (dnn_face_recognition_ex), exported to ONNX from kface's "
                       "PyTorch port with its affine layers folded into the convolutions",
        "provenance": {"source": f"face_recognition_models/models/{DLIB_RESNET}", "source_sha256": source_sha,
                       "face_recognition_models": metadata.version("face_recognition_models")},
        "made_by": "python -m kface.build.dlib_onnx" + ("" if fp16 else " --fp32"),
        "kface_version": __version__, "export": exported,
        "parity": dlib_parity(NETWORK_FILE, chips) if len(chips) else None,
    }
    write_text(CARD_FILE, json.dumps(card, indent=2) + "\n")
    return card


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kface.build.dlib_onnx", description=__doc__.split("\n")[0])
    parser.add_argument("--fp32", action="store_true", help="store float32 weights (default: float16)")
    args = parser.parse_args(argv)
    card = build(fp16=not args.fp32)
    save_hog_detector()
    print(f"wrote {NETWORK_FILE} ({card['size_bytes'] / 2**20:.1f} MiB, sha256 {card['sha256'][:16]}...) and "
          f"{CARD_FILE}; parity with dlib: {card['parity']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
