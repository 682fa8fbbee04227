"""Where the shipped age model was trained and where it drifts: its figures on families it never saw and on
web portraits.

``python -m kface.build attributes-domain --root <korean_family>`` measures the shipped attribute model
on the families added to the set after it was made (:data:`LATER_FAMILIES`: same album source, never
trained on) and on the sample portraits of :data:`PORTRAITS` (modern photos of a Western adult of known age),
and writes the card's ``domain`` block: where it was trained, both measurements, and the drift on
portraits, which answers for adult faces add to their interval (``age_interval_outside_albums``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..api import FaceOptions, load_verifier
from ..evaluation.heldout import merged_index
from ..models import MODELS_DIR
from ..models.attributes import CARD_FILE, attributes_card
from ..util.outputs import write_text
from .attributes import CLASS_NAMES

#: The families filed after the attribute model was made (its card's data names 299 families).
LATER_FAMILIES = ("F0801", "F0849")
#: Sample portraits of one person in the package's examples folder, with his age range in those photos.
PORTRAITS = {"obama.jpg": (47, 51), "obama2.jpg": (47, 51), "obama3.jpg": (47, 51)}
EXAMPLES = MODELS_DIR.parent.parent / "examples"
#: Faces estimated at least this old get the portrait drift added below their interval.
ADULT_AGE = 20
COMMAND = "python -m kface.build attributes-domain --root ../shared/data/korean_family"


def _estimates(paths: list[str], device: str) -> list[dict]:
    verifier = load_verifier("korean", options=FaceOptions(detector="auto", fallback="whole-image", device=device))
    _, result = verifier.embed(paths)
    return verifier.estimated_ages(paths, result)


def later_families_figures(root: Path, device: str = "auto") -> dict:
    """Age class exact and within one, MAE against the class midpoint, and how often the 80% interval holds the
    midpoint, on every photo of :data:`LATER_FAMILIES` (copies merged), for children (under 13) and adults."""
    with open(root / "identities.csv", encoding="utf-8") as handle:
        families = {line.split(",")[2] for line in handle.readlines()[1:]}
    later = {family for family in families if LATER_FAMILIES[0] <= family <= LATER_FAMILIES[1]}
    index = merged_index(root, later)
    estimates = _estimates([str(index.absolute_path(row)) for row in range(len(index))], device)
    labels = [answer["age_group"] for answer in estimates]
    names = attributes_card()["meta"]["classes"]["age"]
    truth = np.array([CLASS_NAMES.index(value) for value in index.attributes["age_class"]])
    guess = np.array([names.index(label) for label in labels])
    ages = np.array([float(value) for value in index.attributes["age"]])
    expected = np.array([answer["expected_age"] for answer in estimates])
    covered = np.array([answer["age_interval"]["low"] <= age <= answer["age_interval"]["high"]
                        for answer, age in zip(estimates, ages)])

    def figures(keep: np.ndarray) -> dict:
        return {"faces": int(keep.sum()), "exact": float(np.mean(guess[keep] == truth[keep])),
                "within_one": float(np.mean(np.abs(guess[keep] - truth[keep]) <= 1)),
                "mae_years": float(np.mean(np.abs(expected[keep] - ages[keep]))),
                "interval_holds_age": float(np.mean(covered[keep]))}

    return {"families": f"{LATER_FAMILIES[0]}-{LATER_FAMILIES[1]} ({len(later)} families filed after the model was "
                        f"made; same album source, never trained on)",
            "all": figures(np.ones(len(ages), bool)), "children": figures(ages < 13), "adults": figures(ages >= 13)}


def portrait_figures(device: str = "auto") -> dict:
    """Each sample portrait's estimate against the known age, and the mean drift (estimated minus true) in years."""
    names = sorted(PORTRAITS)
    estimates = _estimates([str(EXAMPLES / name) for name in names], device)
    rows = []
    for name, answer in zip(names, estimates):
        low, high = PORTRAITS[name]
        rows.append({"photo": f"examples/{name}", "age": [low, high], "age_group": answer["age_group"],
                     "expected_age": round(answer["expected_age"], 1), "interval": answer["age_interval"],
                     "interval_holds_age": answer["age_interval"]["low"] <= high
                                            and answer["age_interval"]["high"] >= low})
    drift = float(np.mean([row["expected_age"] - np.mean(PORTRAITS[name]) for row, name in zip(rows, names)]))
    return {"photos": rows, "drift_years": round(drift, 1)}


def update_attributes_domain(root: Path, device: str = "auto") -> str:
    """Measure both and write the card's ``domain`` block (the file is unchanged, so is its sha256)."""
    portraits = portrait_figures(device)
    body = json.loads(CARD_FILE.read_text(encoding="utf-8"))
    body["domain"] = {
        "trained_on": "Korean family-album photos (many scanned film prints; toddlers to grandparents), 299 families",
        "later_families": later_families_figures(root, device),
        "portraits": portraits,
        "drifts": f"on modern portraits of a Western adult (about {PORTRAITS['obama.jpg'][0]}-"
                  f"{PORTRAITS['obama.jpg'][1]}) it reads {portraits['drift_years']:+.0f} years on average: its age "
                  f"groups are those of Korean family albums, not of web photos",
        "adult_age": ADULT_AGE, "outside_albums_extra_years": max(0.0, portraits["drift_years"]),
        "made_by": COMMAND,
    }
    write_text(CARD_FILE, json.dumps(body, indent=2) + "\n")
    attributes_card.cache_clear()
    return f"wrote the domain block of {CARD_FILE}"
