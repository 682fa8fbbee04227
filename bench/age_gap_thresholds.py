"""What thresholds by estimated age gap are worth for the Korean model (a lever of issue 15, not shipped).

    .venv/bin/python bench/age_gap_thresholds.py

Same-age strangers are closer than strangers at random, so one threshold cannot suit both pair kinds of
the family protocol. Here each face's age class is estimated by the shipped attribute model (from what it
reads: the face's aligned chip since attributes-korean-v4), each pair falls in a bucket by the gap between its two
estimates (or by whether the younger face is a child, or both), and each bucket gets its own max-accuracy threshold,
chosen on the protocol's pairs of the
shipped run's val groups and applied to the held-out groups' pairs. Rows: the card's one threshold, one
threshold chosen on the same val pairs, buckets by class gap (0 / 1+ and 0 / 1 / 2+), by the younger
face (under 13 or not), by both (six buckets), and the oracle
that knows each pair's kind (its threshold per kind, chosen on val: the most any gap rule could get).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_ensemble import korean_indexes, vectors  # noqa: E402  (the same data and embeddings)

KINDS = ("cross-age", "same-age-hard")


def protocol_data(index, heads) -> tuple:
    """(pairs, distances, estimated age-class gap, the younger face's estimated class) per pair of the
    family protocol on ``index``."""
    from kface.evaluation.families import FamilyProtocol, family_folds, protocol_pairs

    protocol = FamilyProtocol()
    pairs = protocol_pairs(index, family_folds(index, protocol), protocol)
    paths = [str(index.absolute_path(i)) for i in range(len(index))]
    from kface.models import MODEL_FAMILIES

    korean = vectors("korean", paths, "auto")
    if heads.input == "chips":  # the shipped model since v4: the face's aligned chip, the one verify uses
        from kface.api import FaceOptions, load_verifier

        entries, _ = load_verifier("korean", options=FaceOptions(detector="auto",
                                                                 fallback="whole-image")).embedder.faces(paths)
        probabilities = heads.chip_probabilities(np.stack([entry.chip for entry in entries]))
    else:
        read = korean if heads.meta["backbone"] == MODEL_FAMILIES["korean"] else vectors("dlib", paths, "auto")
        probabilities = heads.probabilities(read)
    age_class = probabilities["age"].argmax(1)
    distances = np.linalg.norm(korean[pairs.first] - korean[pairs.second], axis=1)
    first, second = age_class[pairs.first], age_class[pairs.second]
    return pairs, distances, np.abs(first - second), np.minimum(first, second)


def accuracies(pairs, distances: np.ndarray, thresholds: np.ndarray) -> str:
    cells = []
    for kind in KINDS:
        chosen = pairs.kinds == kind
        right = (distances[chosen] <= thresholds[chosen]) == (pairs.labels[chosen] == 1)
        cells.append(f"{100 * right.mean():.2f}%")
    return " | ".join(cells)


def main() -> None:
    from kface.attributes.shipped import load_shipped_attributes
    from kface.metrics import choose_threshold
    from kface.models import card

    heads = load_shipped_attributes("cpu")
    val, heldout = korean_indexes()
    val_pairs, val_d, val_gap, val_younger = protocol_data(val, heads)
    pairs, d, gap, younger = protocol_data(heldout, heads)

    def chosen(mask: np.ndarray) -> float:
        return choose_threshold(val_d[mask], val_pairs.labels[mask], "max-accuracy").value

    rows = [("the card's one threshold", np.full(len(d), card("korean")["threshold"]["value"])),
            ("one threshold, chosen on these val pairs", np.full(len(d), chosen(np.ones(len(val_d), bool))))]
    # Buckets: by the gap, by whether the younger face is a child (classes a-b, under 13: most of the
    # errors, bench/korean_errors.py), and by both (gap bucket x 2 + child).
    def gaps(values: np.ndarray) -> np.ndarray:
        return np.digitize(values, [0.5, 1.5])

    def child(values: np.ndarray) -> np.ndarray:
        return (values <= 1).astype(int)

    for name, val_bucket, bucket in (
            ("by class gap: 0 / 1+", np.digitize(val_gap, [0.5]), np.digitize(gap, [0.5])),
            ("by class gap: 0 / 1 / 2+", gaps(val_gap), gaps(gap)),
            ("by the younger face: under 13 / 13+", child(val_younger), child(younger)),
            ("by class gap 0 / 1 / 2+ x younger face under 13 / 13+", 2 * gaps(val_gap) + child(val_younger),
             2 * gaps(gap) + child(younger))):
        by_bucket = {b: chosen(val_bucket == b) for b in np.unique(val_bucket)}
        rows.append((f"{name} ({', '.join(f'{t:.4f}' for t in by_bucket.values())})",
                     np.array([by_bucket[b] for b in bucket])))
    by_kind = {kind: chosen(val_pairs.kinds == kind) for kind in KINDS}
    rows.append(("oracle: each pair's true kind", np.array([by_kind[kind] for kind in pairs.kinds])))
    print("| thresholds (chosen on the val groups) | held-out cross-age | held-out same-age hard |")
    print("|---|---:|---:|")
    for name, thresholds in rows:
        print(f"| {name} | {accuracies(pairs, d, thresholds)} |")


if __name__ == "__main__":
    main()
