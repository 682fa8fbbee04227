"""How the Korean model's int8 copy is made: quantise the shipped float network, check it, score it.

Run through ``python -m kface.build korean-int8 --root <korean_family>`` (the ``korean`` step runs
it too, after the float file). Calibration chips are a seeded sample of the training groups' images (the
population the model serves, never the held-out groups the figures are measured on); the copy is compared
with the float file on other training images, given its own threshold (the float file's rule on the same
val pairs: quantisation moves distances a little), and scored on the held-out groups with the family
protocol, as the float file is. Everything lands in the ``int8`` block of the model's card, which
:func:`kface.models.network_variant` reads to run the copy on the CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..embeddings.embedder import Embedder
from ..engines.quantize import quantize_network
from ..evaluation.family_run import run_benchmark
from ..evaluation.heldout import HELDOUT_FILE, korean_split
from ..models import _read_card, precision
from ..training.checkpoints import load_checkpoint
from ..util.outputs import write_text
from .korean import BACKBONE, CARD_FILE, NAME, NETWORK_FILE, RUN_DIR, VERSION, figures_text, val_families_threshold

INT8_FILE = NETWORK_FILE.with_name(f"korean-{VERSION}-int8.onnx")
INT8_REPORT = Path("reports") / "korean-heldout-int8"
CALIBRATION_IMAGES = 1000
CHECK_IMAGES = 200
SEED = 0
BUILD_COMMAND = "python -m kface.build korean-int8 --root ../shared/data/korean_family"


def training_chips(root: Path, card: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(calibration chips, check chips, training groups sampled from): disjoint seeded samples of the
    training groups' images, cut with the model's own face settings."""
    training, _ = korean_split(root)
    rows = np.random.default_rng(SEED).permutation(len(training))[:CALIBRATION_IMAGES + CHECK_IMAGES]
    faces = card["faces"]
    embedder = Embedder(BACKBONE, detector=faces["detector"], upsample=faces["upsample"], fallback="whole-image")
    entries, _ = embedder.faces([str(training.absolute_path(row)) for row in rows])
    chips = np.stack([entry.chip for entry in entries])
    return chips[:CALIBRATION_IMAGES], chips[CALIBRATION_IMAGES:], len(set(training.attributes["family"]))


def build_int8(root: Path, device: str = "auto") -> str:
    """Quantise the shipped float network, write its card block, and score it on the held-out groups."""
    card = json.loads(CARD_FILE.read_text(encoding="utf-8"))
    calibration, check, groups = training_chips(root, card)
    made = quantize_network(NETWORK_FILE, INT8_FILE, calibration, check)
    card["int8"] = {
        "file": INT8_FILE.name, "sha256": made["sha256"], "size_bytes": made["size_bytes"],
        "source": {"file": NETWORK_FILE.name, "sha256": made["source_sha256"]},
        "quantization": made["settings"],
        "calibration": {"chips": made["calibration_chips"], "seed": SEED,
                        "from": f"a seeded sample of the {groups} training groups' images (never the held-out "
                                f"groups in {HELDOUT_FILE.name}), cut with the model's face settings"},
        "parity": {**made["parity"], "on": f"{len(check)} other training images' chips, against the float file"},
        "runs": "on the CPU by default (KFACE_PRECISION=float runs the float file); the float file on a GPU",
        "made_by": BUILD_COMMAND,
    }
    write_text(CARD_FILE, json.dumps(card, indent=2) + "\n")
    _read_card.cache_clear()
    with precision("int8"):
        # Its own threshold, by the float file's rule on the same val pairs: quantisation moves distances.
        card["int8"]["threshold"] = val_families_threshold(root, load_checkpoint(RUN_DIR / "model.pt"))
        write_text(CARD_FILE, json.dumps(card, indent=2) + "\n")
        _read_card.cache_clear()
        rows = run_benchmark("csv", str(root), {"manifest": str(root / "identities.csv")},
                             groups_file=str(HELDOUT_FILE), models=(NAME,), out=INT8_REPORT, device=device)
    card["int8"]["figures"] = {"protocol": card["figures"]["protocol"], "rows": rows}
    card["int8"]["figures_text"] = [f"int8 copy: {line}" for line in figures_text(card["int8"]["figures"])]
    write_text(CARD_FILE, json.dumps(card, indent=2) + "\n")
    _read_card.cache_clear()
    parity = made["parity"]
    return (f"wrote {INT8_FILE} ({made['size_bytes'] / 2**20:.1f} MiB, cosine to the float file >= "
            f"{parity['min_cosine']:.4f}, mean {parity['mean_cosine']:.5f}) and its block in {CARD_FILE}")
