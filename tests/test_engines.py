"""The ONNX Runtime engine: exported networks against dlib and the PyTorch paths, on real faces."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, lfw_people

from kface.engines import OnnxNetwork
from kface.engines.shipped import shipped_network
from kface.errors import InputError, KfaceError
from kface.models import network_card as shipped_card
from kface.models import network_path as shipped_network_path

PARITY = 0.99999  # cosine, the bar


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def real_chips() -> np.ndarray:
    """Aligned chips of the sample portraits and of 24 LFW images (6 people x 4)."""
    from kface.faces.detect import FaceFinder, FaceSettings
    from kface.faces.images import load_image

    finder = FaceFinder(FaceSettings(detector="dlib", fallback="whole-image"), device="cpu")
    paths = sorted(EXAMPLES.glob("*.jpg")) + [path for _, images in lfw_people(6, 4) for path in images]
    return np.stack([finder.find(load_image(path), str(path)).chip for path in paths])


def test_shipped_network_matches_dlibs_own_descriptor(real_chips):
    import dlib

    from kface.models.dlib_files import DLIB_RESNET, model_file

    native = dlib.face_recognition_model_v1(str(model_file(DLIB_RESNET)))
    reference = np.asarray([np.asarray(v) for v in native.compute_face_descriptor(list(real_chips))])
    exported = shipped_network("dlib-resnet-v1", device="cpu").run(real_chips)
    assert exported.shape == (len(real_chips), 128) and exported.dtype == np.float32
    assert cosines(reference, exported).min() >= PARITY
    assert np.abs(reference - exported).max() < 1e-5  # float32 weights: about 3e-7 here (float16: 1.5e-4)


def test_shipped_card_records_provenance_and_is_checked_at_load(tmp_path):
    from kface.models.dlib_files import DLIB_RESNET, model_file
    from kface.util.hashing import file_sha256

    card = shipped_card("dlib-resnet-v1")
    path = shipped_network_path("dlib-resnet-v1")
    assert card["sha256"] == file_sha256(path)
    assert card["provenance"]["source_sha256"] == file_sha256(model_file(DLIB_RESNET))
    assert card["made_by"].startswith("python -m kface.build.dlib_onnx")
    assert card["parity"]["min_cosine"] >= PARITY
    damaged = tmp_path / "damaged.onnx"
    shutil.copy(path, damaged)
    with open(damaged, "r+b") as handle:
        handle.seek(-16, 2)
        handle.write(b"\0" * 16)
    with pytest.raises(KfaceError, match="sha256 differs"):
        OnnxNetwork(damaged, device="cpu", sha256=card["sha256"]).run(np.zeros((1, 150, 150, 3), np.uint8))


def test_network_rejects_wrong_chips_and_batches_big_inputs(real_chips):
    network = shipped_network("dlib-resnet-v1", device="cpu")
    with pytest.raises(InputError, match=r"takes \(N, 150, 150, 3\) uint8"):
        network.run(real_chips.astype(np.float32))
    from kface.engines import runtime

    many = np.concatenate([real_chips] * 3)
    old, runtime.RUN_BATCH = runtime.RUN_BATCH, 7  # several session calls, the last one short
    try:
        chunked = network.run(many)
    finally:
        runtime.RUN_BATCH = old
    np.testing.assert_allclose(chunked, network.run(many), atol=1e-5)
    assert network.run(real_chips[:0]).shape == (0, 128)


def test_cuda_without_a_cuda_provider_is_one_clear_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(InputError, match="no CUDA execution provider"):
        shipped_network("dlib-resnet-v1", device="cuda").run(np.zeros((1, 150, 150, 3), np.uint8))


# -- tuned checkpoints ---------------------------------------------------------------------------------
def tuned_checkpoint(path, cut: str = "last-block", head: str = "siamese", tta: str = "flip", seed: int = 0) -> None:
    """A checkpoint as kface train writes it, with its suffix and head moved off the pretrained weights
    by seeded noise (a stand-in for training: what matters here is that the export follows them).
    With cut ``none`` the backbone is the default ``dlib-resnet``, as a plain ``kface train`` records it."""
    import torch

    from kface.backbones.trainable import load_network
    from kface.embeddings.prefix import feature_shape
    from kface.training.checkpoints import FORMAT, FORMAT_VERSION
    from kface.training.model import build_pair_model

    torch.manual_seed(seed)
    model = build_pair_model(head, 128, "euclidean", cut, "metric", network=load_network("dlib-torch"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05 * (parameter.std() if parameter.numel() > 1 else 1))
    backbone = "dlib-resnet" if cut == "none" else "dlib-torch"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": backbone, "weights": None,
                "features": {"backbone": backbone, "cut": cut, "tta": tta, "detector": "none", "upsample": 1,
                             "fallback": "none", "weights": None, "shape": list(feature_shape("dlib-torch", cut))},
                "head": {"kind": head, "cut": cut, "embedding_size": 128, "loss": "metric", "dims": None,
                         "state": model.state_dict()},
                "distance": "euclidean", "threshold": {"value": 0.6, "rule": "intersection", "split": "val",
                                                       "note": None},
                "metrics": {}, "epoch": 1, "config": {}, "seed": seed, "data": {}, "versions": {}}, path)


@pytest.mark.parametrize("cut,head,tta", [("last-block", "siamese", "flip"), ("last-stage", "none", "none"),
                                          ("none", "siamese", "flip")])
def test_tuned_checkpoint_through_onnx_matches_the_torch_pair_model_path(tmp_path, cut, head, tta):
    from kface.api import FaceOptions, verifier_from_checkpoint

    model = tmp_path / "model.pt"
    tuned_checkpoint(model, cut, head, tta)
    images = [str(path) for _, paths in lfw_people(2, 2) for path in paths]
    answers = {}
    for engine in ("torch", "onnx"):
        verifier = verifier_from_checkpoint(model, engine=engine, options=FaceOptions(detector="none", device="cpu",
                                                                                      cache=False))
        vectors, _ = verifier.embed(images)
        answers[engine] = (vectors, verifier.distances(vectors[:2], vectors[2:]))
    assert cosines(answers["torch"][0], answers["onnx"][0]).min() >= PARITY
    np.testing.assert_allclose(answers["onnx"][1], answers["torch"][1], atol=1e-5)


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_a_head_on_the_shipped_korean_model_runs_through_onnx_as_through_torch(tmp_path, monkeypatch, precision):
    """``kface train --backbone kface-korean-v4`` (a head on the shipped model's frozen vectors): the default
    engine runs the copy of the shipped file the head trained on and the head as one exported graph, with
    the torch path's answers."""
    import torch

    from kface.api import FaceOptions, verifier_from_checkpoint
    from kface.models import MODEL_FAMILIES, network_variant
    from kface.training.checkpoints import FORMAT, FORMAT_VERSION
    from kface.training.model import build_pair_model

    backbone = MODEL_FAMILIES["korean"]
    monkeypatch.setenv("KFACE_PRECISION", precision)  # the copy the head "trained on", and the torch path's
    trained_on = network_variant(backbone, "cpu")
    torch.manual_seed(0)
    model = build_pair_model("siamese", 256, "euclidean", "none", "bce")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": backbone, "weights": None,
                "features": {"backbone": backbone, "cut": "none", "tta": "none", "detector": "none", "upsample": 1,
                             "fallback": "none", "weights": None, "shape": [256],
                             "network": {"precision": precision, "sha256": trained_on["sha256"]}},
                "head": {"kind": "siamese", "cut": "none", "embedding_size": 256, "loss": "bce", "dims": None,
                         "state": model.state_dict()},
                "distance": "euclidean", "threshold": {"value": 0.6, "rule": "intersection", "split": "val",
                                                       "note": None},
                "metrics": {}, "epoch": 1, "config": {}, "seed": 0, "data": {}, "versions": {}}, tmp_path / "model.pt")
    images = [str(path) for _, paths in lfw_people(2, 2) for path in paths]
    answers = {}
    for engine in ("torch", "onnx"):
        verifier = verifier_from_checkpoint(tmp_path / "model.pt", engine=engine, options=FaceOptions(detector="none",
                                                                                                      device="cpu",
                                                                                                      cache=False))
        vectors, _ = verifier.embed(images)
        answers[engine] = (vectors, verifier.distances(vectors[:2], vectors[2:]))
    assert cosines(answers["torch"][0], answers["onnx"][0]).min() >= PARITY
    np.testing.assert_allclose(answers["onnx"][1], answers["torch"][1], atol=1e-5)


def test_a_checkpoint_is_exported_once_and_later_verifies_import_no_torch(tmp_path):
    from kface.training.onnx_cache import cache_paths
    from kface.util.hashing import file_sha256

    model = tmp_path / "model.pt"
    tuned_checkpoint(model, seed=1)  # a checkpoint no other test exports: its first use must export it
    a, b = (str(path) for path in lfw_people(1, 2)[0][1])
    code = ("import json, sys\nfrom kface.api import FaceOptions, verifier_from_checkpoint\n"
            f"v = verifier_from_checkpoint({str(model)!r}, options=FaceOptions(detector='none', device='cpu'))\n"
            f"answer = v.verify({a!r}, {b!r})\n"
            "print(json.dumps({'distance': answer.distance, 'torch': 'torch' in sys.modules}))")
    first = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])
    onnx_file, card_file = cache_paths(file_sha256(model))
    assert onnx_file.is_file() and json.loads(card_file.read_text())["checkpoint_sha256"] == file_sha256(model)
    second = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.splitlines()[-1])
    assert first["torch"] and not second["torch"]
    assert second["distance"] == pytest.approx(first["distance"], abs=1e-6)


def test_export_checkpoint_reports_its_file_and_keeps_parity_with_fp16(tmp_path):
    from kface.training.export import export_checkpoint
    from kface.util.hashing import file_sha256

    model = tmp_path / "model.pt"
    tuned_checkpoint(model, "last-stage", "none", "flip")
    full = export_checkpoint(model, tmp_path / "full.onnx", fp16=False)
    half = export_checkpoint(model, tmp_path / "half.onnx", fp16=True)
    assert full["sha256"] == file_sha256(tmp_path / "full.onnx") and full["checkpoint_sha256"] == file_sha256(model)
    assert full["input"] == {"name": "chips", "dtype": "uint8", "shape": ["batch", 150, 150, 3],
                             "layout": "NHWC RGB aligned chips"}
    assert full["output"]["shape"] == ["batch", 128] and (full["cut"], full["tta"]) == ("last-stage", "flip")
    assert half["size_bytes"] < 0.6 * full["size_bytes"]
    assert full["parity"]["min_cosine"] >= PARITY and half["parity"]["min_cosine"] >= PARITY


def test_base_ensemble_export_is_the_tuned_vector_beside_weighted_stock_dlib(tmp_path, real_chips):
    """The shipped Korean model's layout: one graph, the tuned vector then base_weight x stock dlib's own
    embedding, computed from the frozen layers both networks share."""
    from kface.training.export import export_checkpoint

    model = tmp_path / "model.pt"
    tuned_checkpoint(model, "last-stage", "none", "flip")
    export_checkpoint(model, tmp_path / "tuned.onnx")
    both = export_checkpoint(model, tmp_path / "both.onnx", base_weight=0.5)
    assert both["output"]["shape"] == ["batch", 256] and both["base_weight"] == 0.5
    assert both["parity"]["min_cosine"] >= PARITY
    vectors = OnnxNetwork(tmp_path / "both.onnx", device="cpu").run(real_chips)
    np.testing.assert_allclose(vectors[:, :128], OnnxNetwork(tmp_path / "tuned.onnx", device="cpu").run(real_chips),
                               atol=1e-5)
    stock = shipped_network("dlib-resnet-v1", device="cpu").run(real_chips)
    assert cosines(vectors[:, 128:], 0.5 * stock).min() >= PARITY
    np.testing.assert_allclose(vectors[:, 128:], 0.5 * stock, atol=1e-4)


def test_a_base_ensemble_needs_a_frozen_prefix(tmp_path):
    from kface.training.export import export_checkpoint

    model = tmp_path / "model.pt"
    tuned_checkpoint(model, "none", "siamese", "flip")
    with pytest.raises(InputError, match="needs a frozen prefix"):
        export_checkpoint(model, tmp_path / "both.onnx", base_weight=0.5)
