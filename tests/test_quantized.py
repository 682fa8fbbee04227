"""The Korean model's int8 copy: checksummed, run on the CPU by default, near the float file on real faces,
kept apart from it in the cache; KFACE_PRECISION chooses; the quantiser itself makes a working copy."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import EXAMPLES

from kface.api import FaceOptions, load_verifier
from kface.cli import cli
from kface.embeddings.embedder import Embedder
from kface.engines.runtime import OnnxNetwork, compare_vectors
from kface.errors import InputError
from kface.models import MODEL_FAMILIES, MODELS_DIR, PRECISION_VARIABLE, card, network_path, network_variant
from kface.util.hashing import file_sha256

FAMILY = MODEL_FAMILIES["korean"]
PORTRAITS = sorted(EXAMPLES.glob("*.jpg"))


def example_chips() -> np.ndarray:
    entries, _ = Embedder(FAMILY, detector="auto", fallback="whole-image",
                          cache=False).faces([str(p) for p in PORTRAITS])
    return np.stack([entry.chip for entry in entries])


def test_the_int8_card_block_and_its_file_agree():
    body = card("korean")
    int8 = body["int8"]
    path = network_path(FAMILY, check=True, variant=int8)
    assert file_sha256(path) == int8["sha256"] and path.stat().st_size == int8["size_bytes"]
    assert path.stat().st_size < 0.6 * (MODELS_DIR / body["file"]).stat().st_size  # int8 < float16
    assert int8["source"]["sha256"] == body["sha256"]  # made from the float file that ships beside it
    assert int8["made_by"].startswith("python -m kface.build korean-int8")
    assert int8["calibration"]["chips"] >= 400 and "never the held-out" in int8["calibration"]["from"]
    # On the val groups (which choose the thresholds), each copy at its own threshold: within 0.2 point and
    # 0.002 AUC of the float file. The held-out groups only report (docs/inference.md, "The int8 copy"): there the
    # copy's AUC is within 0.001 of the float file's on both pair kinds.
    assert abs(int8["threshold"]["val_accuracy"] - body["threshold"]["val_accuracy"]) <= 0.002
    assert abs(int8["threshold"]["val_auc"] - body["threshold"]["val_auc"]) <= 0.002
    for kind, entry in int8["figures"]["rows"][0]["pair_kinds"].items():
        assert abs(entry["auc"] - body["figures"]["rows"][0]["pair_kinds"][kind]["auc"]) <= 0.005, kind


def test_precision_is_chosen_by_device_and_variable(monkeypatch):
    monkeypatch.delenv(PRECISION_VARIABLE, raising=False)
    assert network_variant(FAMILY, "cpu")["precision"] == "int8"
    assert network_variant(FAMILY, "cuda")["precision"] == "float"
    assert network_variant("dlib-resnet-v1", "cpu")["precision"] == "float"  # no int8 copy ships for it
    monkeypatch.setenv(PRECISION_VARIABLE, "float")
    assert network_variant(FAMILY, "cpu") == {"precision": "float", "file": card("korean")["file"],
                                              "sha256": card("korean")["sha256"]}
    monkeypatch.setenv(PRECISION_VARIABLE, "int8")
    assert network_variant(FAMILY, "cuda")["precision"] == "int8"
    with pytest.raises(InputError, match="no int8 copy ships"):
        network_variant("dlib-resnet-v1", "cpu")
    monkeypatch.setenv(PRECISION_VARIABLE, "fp4")
    with pytest.raises(InputError, match="choose one of auto, float, int8"):
        network_variant(FAMILY, "cpu")


def test_a_bad_precision_is_one_error_line(monkeypatch):
    monkeypatch.setenv(PRECISION_VARIABLE, "fp4")
    result = CliRunner().invoke(cli, ["verify", str(EXAMPLES / "obama.jpg"), str(EXAMPLES / "obama2.jpg")])
    assert result.exit_code == 2
    assert result.output == f"error: {PRECISION_VARIABLE}=fp4: choose one of auto, float, int8\n"


def test_int8_runs_by_default_and_answers_as_the_float_file(monkeypatch):
    """Both copies on the same real faces: the same answers, distances within a few thousandths, and
    separate cache entries (the vectors are near, not equal)."""
    monkeypatch.delenv(PRECISION_VARIABLE, raising=False)
    int8 = load_verifier("korean", options=FaceOptions(device="cpu"))
    monkeypatch.setenv(PRECISION_VARIABLE, "float")
    full = load_verifier("korean", options=FaceOptions(device="cpu"))
    assert (int8.embedder.precision, full.embedder.precision) == ("int8", "float")
    assert int8.embedder.vector_tag != full.embedder.vector_tag
    # each copy at its own threshold, chosen by the same rule on the same val pairs
    body = card("korean")
    assert int8.threshold == body["int8"]["threshold"]["value"] and "int8 copy" in int8.threshold_source
    assert full.threshold == body["threshold"]["value"] and "int8" not in full.threshold_source
    assert body["int8"]["threshold"]["rule"] == body["threshold"]["rule"]
    assert body["int8"]["threshold"]["pairs"] == body["threshold"]["pairs"]
    for a, b, same in (("obama.jpg", "obama2.jpg", True), ("obama.jpg", "biden.jpg", False)):
        answers = [verifier.verify(EXAMPLES / a, EXAMPLES / b) for verifier in (int8, full)]
        assert [answer.same for answer in answers] == [same, same]
        assert answers[0].precision == "int8" and answers[1].precision == "float"
        assert answers[0].distance == pytest.approx(answers[1].distance, abs=0.02)
    monkeypatch.delenv(PRECISION_VARIABLE)
    result = CliRunner().invoke(cli, ["verify", "--json", str(EXAMPLES / "obama.jpg"), str(EXAMPLES / "obama2.jpg")])
    assert result.exit_code == 0 and json.loads(result.stdout)["precision"] == "int8"


@pytest.mark.parametrize("wanted", ["float", "int8"])
def test_a_rebuilt_shipped_file_never_reads_the_old_files_cached_vectors(monkeypatch, tmp_path, wanted):
    """Cached vectors and stored training features are keyed by the file that made them, not its name."""
    import kface.embeddings.embedder
    import kface.models
    from kface.training.store import FeatureSpec, FeatureStore

    monkeypatch.setenv(PRECISION_VARIABLE, wanted)
    spec = FeatureSpec(FAMILY, "none", "none", "auto", 1, "whole-image", None)
    before = Embedder(FAMILY, cache=False).vector_tag, FeatureStore(spec, folder=tmp_path).folder
    real = kface.models.network_variant
    monkeypatch.setattr(kface.embeddings.embedder, "network_variant",
                        lambda family, device="auto": {**real(family, device), "sha256": "0" * 64})
    after = Embedder(FAMILY, cache=False).vector_tag, FeatureStore(spec, folder=tmp_path).folder
    assert after[0] != before[0] and after[1] != before[1]


def test_int8_parity_on_real_chips():
    chips = example_chips()
    float_path = network_path(FAMILY)
    int8_path = network_path(FAMILY, variant=card("korean")["int8"])
    parity = compare_vectors(OnnxNetwork(float_path, device="cpu").run(chips),
                             OnnxNetwork(int8_path, device="cpu").run(chips))
    assert parity["min_cosine"] > 0.995 and parity["distance_max_abs_diff"] < 0.03, parity


@pytest.mark.slow
def test_quantize_network_makes_a_working_int8_copy(tmp_path):
    """The committed quantiser on the shipped float file, calibrated on the sample portraits: an int8 graph
    (float16 weights read as float32 first) that runs and stays near the float file."""
    import onnx

    from kface.engines.quantize import quantize_network

    chips = example_chips()
    out = tmp_path / "int8.onnx"
    made = quantize_network(network_path(FAMILY), out, calibration=chips, check=chips)
    model = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in model.graph.node}
    assert not any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert made["sha256"] == file_sha256(out) and made["calibration_chips"] == len(chips)
    assert made["parity"]["min_cosine"] > 0.99, made["parity"]
    assert not list(tmp_path.glob(".*")), "no temp file left beside the output"
    with pytest.raises(InputError, match="calibration chips"):
        quantize_network(network_path(FAMILY), tmp_path / "none.onnx", calibration=chips[:0], check=chips)
