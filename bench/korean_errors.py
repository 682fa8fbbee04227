"""Where the shipped Korean model's errors lie on the held-out groups (issue 15's 95 % / 94 % goal).

    .venv/bin/python bench/korean_errors.py [--precision float|int8]

The family protocol's pairs of the 16 held-out groups (`kface/models/korean-heldout-families.txt`),
scored at the model card's threshold, broken down by what the labels say of each pair: for the same
person across ages, the gap between the two photos' age classes and the younger photo's class; for
strangers, the younger photo's class; for same-age hard pairs, their age class. Each row: pairs, how
many the model gets right, and its share of all the errors of that pair kind. The last lines say what
accuracy each kind would reach if one cell's errors were all mended, which tells how far a lever that
only helped there could go.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_ensemble import DATA  # noqa: E402  (the same data folder)

CLASSES = "abcdefgh"
SPANS = ("0-6", "7-12", "13-19", "20-30", "31-45", "46-55", "56-66", "67-80")


def label(code: int) -> str:
    return f"{CLASSES[code]} {SPANS[code]}"


def breakdown(title: str, cells: np.ndarray, right: np.ndarray, names) -> list[str]:
    """Markdown rows: per value of ``cells``, pairs, accuracy and share of the errors."""
    errors = int((~right).sum())
    lines = [f"| {title} | pairs | right | share of the errors |", "|---|---:|---:|---:|"]
    for value in np.unique(cells):
        chosen = cells == value
        wrong = int((~right[chosen]).sum())
        lines.append(f"| {names(value)} | {int(chosen.sum())} | {100 * right[chosen].mean():.1f}% | "
                     f"{100 * wrong / max(errors, 1):.0f}% |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("float", "int8"), default=None,
                        help="the shipped file to score [default: the one kface runs here]")
    args = parser.parse_args()
    if args.precision:
        os.environ["KFACE_PRECISION"] = args.precision
    from kface.api import FaceOptions, load_verifier
    from kface.evaluation.families import FamilyProtocol, family_folds, protocol_pairs
    from kface.evaluation.heldout import korean_split

    index = korean_split(DATA / "korean_family")[1]
    protocol = FamilyProtocol()
    pairs = protocol_pairs(index, family_folds(index, protocol), protocol)
    verifier = load_verifier("korean", options=FaceOptions(detector="auto", fallback="whole-image"))
    vectors, _ = verifier.embed([str(index.absolute_path(i)) for i in range(len(index))])
    distances = verifier.distances(vectors[pairs.first], vectors[pairs.second])
    right = (distances <= verifier.threshold) == (pairs.labels == 1)
    age = np.array([CLASSES.index(value) for value in index.attributes["age_class"]])
    first, second = age[pairs.first], age[pairs.second]
    younger, gap = np.minimum(first, second), np.abs(first - second)

    print(f"korean model ({verifier.model_name}), threshold {verifier.threshold:.4f}; "
          f"held-out groups: {len(index)} images, {len(index.identity_names)} people\n")
    sections = [
        ("cross-age", 1, "same person: class gap", gap, lambda g: f"{g} class{'es' if g > 1 else ''}"),
        ("cross-age", 1, "same person: younger photo", younger, label),
        ("cross-age", 0, "strangers: younger photo", younger, label),
        ("same-age-hard", 1, "same person: age class", first, label),
        ("same-age-hard", 0, "strangers: age class", first, label),
    ]
    for kind in ("cross-age", "same-age-hard"):
        of_kind = pairs.kinds == kind
        print(f"## {kind}: {100 * right[of_kind].mean():.2f}% right, {int((~right[of_kind]).sum())} errors "
              f"in {int(of_kind.sum())} pairs\n")
        for section_kind, same, title, cells, names in sections:
            if section_kind != kind:
                continue
            chosen = of_kind & (pairs.labels == same)
            print("\n".join(breakdown(title, cells[chosen], right[chosen], names)) + "\n")
        if kind == "cross-age":
            errors = ~right & of_kind
            same = pairs.labels == 1
            for text, cell in (("same-person pairs two or more classes apart", same & (gap >= 2)),
                               ("same-person pairs three or more classes apart", same & (gap >= 3)),
                               ("same-person pairs with a photo under 13", same & (younger <= 1))):
                mended = right[of_kind].sum() + (errors & cell).sum()
                print(f"- every error mended among {text}: {100 * mended / of_kind.sum():.2f}%")
        print()


if __name__ == "__main__":
    main()
