"""What the base-descriptor ensemble is worth: the Korean model's tuned vector with w x stock dlib's, by w.

    .venv/bin/python bench/base_ensemble.py [--weights 0,0.2,0.3,0.5,0.7,1]

The shipped Korean model's vector is its tuned network's (the first 128 values) concatenated with
``BASE_WEIGHT`` x stock dlib's embedding (the rest; kface.build.korean). This rebuilds the vector at
other weights from the shipped model's tuned part and stock dlib's own embedding, and scores each on:

- LFW View-2 (10 folds, max-accuracy threshold chosen on the other nine);
- the family protocol's pairs (5 folds, 400 + 400 pairs of each kind per fold, threshold chosen on the
  other folds) on the shipped run's val groups (trained on by neither network's tuning; these choose the
  weight), and on the held-out groups (kface/models/korean-heldout-families.txt; these only report).

Embeddings come from the kface cache once ``kface benchmark lfw`` and the model build have run (else
they are computed now, which takes minutes).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def vectors(model: str, paths: list[str], detector: str) -> np.ndarray:
    from kface.api import FaceOptions, load_verifier

    embedded, _ = load_verifier(model, options=FaceOptions(detector=detector, fallback="whole-image")).embed(paths)
    return embedded


def tuned_and_base(paths: list[str], detector: str) -> tuple[np.ndarray, np.ndarray]:
    """The shipped Korean model's tuned part and stock dlib's embedding of each of ``paths``."""
    base = vectors("dlib", paths, detector)
    korean = vectors("korean", paths, detector)
    return korean[:, :korean.shape[1] - base.shape[1]], base


def lfw_rows(weights: list[float]) -> list[str]:
    from kface.evaluation.lfw import read_lfw_pairs
    from kface.metrics import kfold_protocol

    pairs = read_lfw_pairs(DATA / "lfw")
    paths = pairs.unique_paths
    position = {path: i for i, path in enumerate(paths)}
    first = np.array([position[p] for p in pairs.path_a])
    second = np.array([position[p] for p in pairs.path_b])
    tuned, base = tuned_and_base(paths, "dlib")
    rows = []
    for weight in weights:
        combined = np.concatenate([tuned, weight * base], axis=1)
        result = kfold_protocol(np.linalg.norm(combined[first] - combined[second], axis=1), pairs.labels, pairs.folds)
        rows.append(f"{100 * result.mean_accuracy:.2f}% ± {100 * result.std_accuracy:.2f}")
    stock = kfold_protocol(np.linalg.norm(base[first] - base[second], axis=1), pairs.labels, pairs.folds)
    return rows + [f"{100 * stock.mean_accuracy:.2f}% ± {100 * stock.std_accuracy:.2f}"]


def korean_indexes():
    """(val groups' index, held-out groups' index) of the merged korean_family set."""
    from kface.build.korean import RUN_DIR, val_groups_index
    from kface.evaluation.heldout import korean_split

    root = DATA / "korean_family"
    return val_groups_index(root, REPO / RUN_DIR), korean_split(root)[1]


def family_rows(index, weights: list[float]) -> list[str]:
    from kface.evaluation.families import FamilyProtocol, family_folds, protocol_pairs
    from kface.metrics import kfold_protocol

    protocol = FamilyProtocol()
    pairs = protocol_pairs(index, family_folds(index, protocol), protocol)
    tuned, base = tuned_and_base([str(index.absolute_path(i)) for i in range(len(index))], "auto")
    rows = []
    for weight in weights:
        combined = np.concatenate([tuned, weight * base], axis=1)
        distances = np.linalg.norm(combined[pairs.first] - combined[pairs.second], axis=1)
        cells = []
        for kind in ("cross-age", "same-age-hard"):
            chosen = pairs.kinds == kind
            result = kfold_protocol(distances[chosen], pairs.labels[chosen], pairs.folds[chosen])
            cells.append(f"{100 * result.mean_accuracy:.2f}% ± {100 * result.std_accuracy:.2f}")
        rows.append(" / ".join(cells))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="0,0.2,0.3,0.5,0.7,1")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    val, heldout = korean_indexes()
    lfw = lfw_rows(weights)
    val_rows, heldout_rows = family_rows(val, weights), family_rows(heldout, weights)
    print("| w (stock dlib's share) | LFW View-2 | val groups: cross-age / same-age hard | held-out groups: cross-age "
          "/ "
          "same-age hard |")
    print("|---:|---:|---:|---:|")
    for i, weight in enumerate(weights):
        print(f"| {weight:g} | {lfw[i]} | {val_rows[i]} | {heldout_rows[i]} |")
    print(f"| stock dlib alone | {lfw[-1]} | | |")


if __name__ == "__main__":
    main()
