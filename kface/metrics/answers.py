"""What an answer carries besides same/different, read from a model card's ``answers`` block.

The block (written by ``python -m kface.build answers``, see :mod:`kface.build.card_answers`)
holds the model's operating points (thresholds chosen on val groups, each with the false-accept and
true-accept rates measured on held-out groups), the calibrated probability that the two faces are one
person, the caution rule for pairs where the model is weak (a face estimated under 13, or an estimated
age gap of several classes) with the held-out accuracy of such pairs, the distance band where it would
rather say "cannot tell", and its val pairs' distance distributions (the page draws them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .calibration import Calibration
from .operating_points import BALANCED, FAR_LEVELS, choose_point, far_threshold, point_name, rates_at

#: The calibration band of a pair the caution rule flags, and of every other pair; ``ALIKE`` is added to the
#: band's name where both faces are estimated of one age group and gender (the pairs where strangers look
#: most alike, so a distance means less).
CAUTION, OTHER, ALIKE = "caution", "other", "-alike"
#: What ``answer`` says where ``--abstain`` finds the distance inside the model's unsure band.
CANNOT_TELL = "cannot tell"


@dataclass
class ModelAnswers:
    """A card's answers block, ready to apply to one pair's distance and estimated ages."""

    block: dict

    @property
    def points(self) -> dict:
        return self.block["points"]

    def point(self, operating_point: str | None = None, far: float | None = None) -> str:
        """The name of the point asked for (None and None: ``balanced``); an unknown one is an InputError."""
        return choose_point(self.points, operating_point, far)

    def threshold(self, name: str) -> float:
        return float(self.points[name]["threshold"])

    def expected(self, name: str) -> dict:
        """The false-accept and true-accept rates measured at point ``name``: on held-out groups (both pair kinds
        pooled) where the card has them, else on the model's val pairs."""
        point = self.points[name]
        measured = point["heldout"]["both"] if "heldout" in point else point["val"]
        return {"expected_far": measured["far"], "expected_tar": measured["tar"]}

    def source(self, model: str, name: str) -> str:
        return f"{model} model card, operating point {name}: {self.points[name]['rule']}"

    def band(self, ages: list[dict | None]) -> str:
        """``caution`` where the caution rule flags the pair (by the faces' estimated age groups), else ``other``;
        with ``-alike`` where both faces are estimated of one age group and one gender."""
        keys = [(age.get("age_group"), age.get("gender")) if age else None for age in ages]
        alike = keys[0] is not None and None not in keys[0] and keys[0] == keys[1]
        return (CAUTION if self.caution_reason(ages) else OTHER) + (ALIKE if alike else "")

    def caution_reason(self, ages: list[dict | None]) -> str | None:
        """Why the model is weak on this pair (one sentence), or None; needs both faces' estimated ages."""
        rule = self.block.get("caution")
        if rule is None:
            return None
        groups = [age and age.get("age_group") for age in ages]
        if any(group not in rule["classes"] for group in groups):
            return None
        if any(group in rule["child_classes"] for group in groups):
            return "a face looks under 13, where this model errs most"
        gap = abs(rule["classes"].index(groups[0]) - rule["classes"].index(groups[1]))
        if gap >= rule["gap_classes"]:
            return f"the faces look {gap} age groups apart, where this model errs more"
        return None

    def caution(self, ages: list[dict | None]) -> dict | None:
        """The ``caution`` an answer carries: the reason and the held-out accuracy of such pairs; else None."""
        reason = self.caution_reason(ages)
        if reason is None:
            return None
        measured = self.block["caution"]["heldout"][CAUTION]
        return {"reason": reason, "heldout_accuracy": measured["accuracy"], "heldout_pairs": measured["pairs"]}

    def calibration(self, band: str) -> Calibration:
        """The band's curve: the card's for this band, else for its caution part, else its one curve."""
        fitted = self.block["probability"]["calibration"]
        return Calibration.from_dict(fitted.get(band) or fitted.get(band.removesuffix(ALIKE)) or fitted)

    def probability(self, distance: float, band: str = OTHER) -> float | None:
        """P(one person) for this distance, calibrated on val pairs (even odds of same and different); None
        where the card has no calibration."""
        if "probability" not in self.block:
            return None
        return float(np.clip(self.calibration(band)(distance), 0.0, 1.0))

    def unsure(self, distance: float, band: str = OTHER) -> bool:
        """Whether the distance lies in the band's unsure range (where the calibrated probability says the answer
        is right less often than the card's abstention level)."""
        bands = self.block.get("abstain", {}).get("bands", {})
        limits = bands.get(band, bands.get(band.removesuffix(ALIKE)))
        return limits is not None and limits[0] <= distance <= limits[1]

    def annotate(self, point: str, distance: float, same: bool, ages: list[dict | None], abstain: bool = False) -> dict:
        """The fields an answer carries at ``point``: expected FAR/TAR, probability, caution and the answer
        (``cannot tell`` with ``abstain`` inside the unsure range)."""
        band = self.band(ages)
        unsure = abstain and self.unsure(distance, band)
        return {"operating_point": point, **self.expected(point), "probability": self.probability(distance, band),
                "caution": self.caution(ages), "answer": CANNOT_TELL if unsure else ("same" if same else "different")}


def answers_from_val(distances: np.ndarray, labels: np.ndarray, threshold: float, rule: str) -> ModelAnswers:
    """A trained model's operating points from its own val pairs: its threshold as ``balanced``, and each
    ``far=X`` point its val strangers are enough to choose (FAR and TAR measured on those same val pairs)."""
    points = {BALANCED: {"threshold": float(threshold), "rule": rule}}
    for far in FAR_LEVELS:
        try:
            points[point_name(far)] = {"threshold": far_threshold(distances, labels, far),
                                       "rule": f"false-accept rate <= {far:g} on the model's val strangers"}
        except InputError:  # too few val strangers to choose this point
            continue
    for point in points.values():
        point["val"] = rates_at(distances, labels, point["threshold"])
    return ModelAnswers({"points": points})


def answers_of(body: dict, precision: str = "float") -> ModelAnswers | None:
    """The answers block of a card (its int8 copy's where ``precision`` is int8 and it has one), or None."""
    block = body.get("int8", {}).get("answers") if precision == "int8" else body.get("answers")
    return ModelAnswers(block) if block else None


__all__ = ["ALIKE", "BALANCED", "CANNOT_TELL", "CAUTION", "OTHER", "ModelAnswers", "answers_from_val", "answers_of"]
