"""The ``answers`` block of a shipped face model's card, for an existing model file (no retraining).

Chosen on the model's val groups (never trained on, never held out), measured on the held-out groups
(``korean-heldout-families.txt``): the operating points (``balanced``: the card's threshold; ``far=1e-2``
and ``far=1e-3``: thresholds at those false-accept rates on val strangers of both pair kinds), the
calibrated probability (isotonic or Platt; one curve, one per caution band, or one per caution band and
likeness of the two faces' estimated age group and gender: whichever a two-fold split of the val groups
finds best calibrated), the caution rule (a face estimated under 13, or an estimated age gap of
:data:`GAP_CLASSES` classes or more) with the held-out accuracy of such pairs, the abstention band (where the
calibrated probability says the answer is right less often than
:data:`ABSTAIN_LEVEL`) and the val pairs' distance histograms. Pairs are the family protocol's two kinds
(:mod:`kface.evaluation.families`), drawn from all of a side's images at once (no folds), seeded.

Entry point: :func:`update_card_answers` (``python -m kface.build answers``); a new model calls it
with its own val groups (:func:`run_val_groups` reads them from its training run's pair file).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..evaluation.families import PAIR_KINDS, FamilyProtocol, protocol_pairs
from ..evaluation.family_scoring import _pair_distances
from ..metrics.answers import ALIKE, CAUTION, OTHER, ModelAnswers
from ..metrics.calibration import (
    METHODS,
    balanced_weights,
    expected_calibration_error,
    fit_calibration,
    probability_band,
    reliability,
)
from ..metrics.operating_points import (
    BALANCED,
    FAR_LEVELS,
    far_threshold,
    point_name,
    rates_at,
)
from ..models.attributes import attributes_card
from ..pairs import read_pairs
from ..util.outputs import write_text

#: Pairs of each class of each kind drawn per side (fewer where fewer exist: same-person pairs are all kept).
PAIRS_PER_CLASS = 5000
#: ``--abstain`` says "cannot tell" where the calibrated probability is within (1 - level, level).
ABSTAIN_LEVEL = 0.8
#: A face whose estimated age group ends at or below this age is a child's for the caution rule.
CHILD_AGE = 13
#: Estimated age groups this far apart or more make a pair one to be cautious about.
GAP_CLASSES = 3
#: Width of the distance histograms the card stores.
HISTOGRAM_WIDTH = 0.01


@dataclass
class ScoredPairs:
    """One side's pairs: distance, label (1 same), kind, caution flag, and the group of each face."""

    distances: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    bands: np.ndarray  # each pair's calibration band (kface.metrics.answers.ModelAnswers.band)
    groups: np.ndarray  # (pairs, 2)

    def subset(self, keep: np.ndarray) -> ScoredPairs:
        return ScoredPairs(self.distances[keep], self.labels[keep], self.kinds[keep], self.bands[keep],
                           self.groups[keep])

    @property
    def caution(self) -> np.ndarray:
        return np.char.startswith(self.bands.astype(str), CAUTION)

    @property
    def weights(self) -> np.ndarray:
        return balanced_weights(self.labels, self.kinds)


def caution_rule(age_labels: list[str], age_bins: list[int]) -> dict:
    """The caution rule for an attribute model's age groups (``age_bins``: each group's lower edge)."""
    upper = list(age_bins[1:]) + [None]
    return {"classes": list(age_labels), "gap_classes": GAP_CLASSES,
            "child_classes": [label for label, end in zip(age_labels, upper) if end is not None and end <= CHILD_AGE],
            "rule": f"either face estimated under {CHILD_AGE}, or the estimated age groups {GAP_CLASSES} or more apart"}


def estimated_ages(verifier, index) -> list[dict | None]:
    """Each image's estimated age (the verifier's attribute model, on the faces its embedder finds)."""
    paths = [str(index.absolute_path(row)) for row in range(len(index))]
    _, result = verifier.embed(paths)
    return verifier.estimated_ages(paths, result)


def score_pairs(verifier, index, ages: list[dict | None], rule: dict, seed: int,
                pairs_per_class: int = PAIRS_PER_CLASS) -> ScoredPairs:
    """The protocol's pairs over all of ``index`` (one pool), scored by ``verifier``, with caution flags."""
    protocol = FamilyProtocol(pairs_per_class=pairs_per_class, seed=seed)
    pairs = protocol_pairs(index, np.zeros(len(index), dtype=np.int64), protocol)
    distances = _pair_distances(verifier, index, pairs, np.arange(len(index)))
    checker = ModelAnswers({"caution": rule})
    bands = np.array([checker.band([ages[a], ages[b]]) for a, b in zip(pairs.first, pairs.second)], dtype=object)
    groups = np.asarray(index.attributes["family"], dtype=object)
    return ScoredPairs(distances, pairs.labels, pairs.kinds, bands,
                       np.stack([groups[pairs.first], groups[pairs.second]], 1))


def _by_kind(pairs: ScoredPairs, measure: Callable[[ScoredPairs], dict]) -> dict:
    return {**{kind: measure(pairs.subset(pairs.kinds == kind)) for kind in PAIR_KINDS}, "both": measure(pairs)}


def counts(pairs: ScoredPairs) -> dict:
    return _by_kind(pairs, lambda p: {"same": int(p.labels.sum()), "different": int((p.labels == 0).sum())})


def operating_points(val: ScoredPairs, heldout: ScoredPairs, balanced: dict) -> dict:
    """``balanced`` (the card's threshold) and one point per :data:`FAR_LEVELS`, each measured on held-out."""
    points = {BALANCED: {"threshold": float(balanced["value"]), "rule": balanced["source"]}}
    for far in FAR_LEVELS:
        points[point_name(far)] = {
            "threshold": far_threshold(val.distances, val.labels, far),
            "rule": f"false-accept rate <= {far:g} on {int((val.labels == 0).sum())} val strangers of both pair "
                    f"kinds (groups never trained on, not the held-out ones)"}
    for point in points.values():
        point["val"] = rates_at(val.distances, val.labels, point["threshold"])
        point["heldout"] = _by_kind(heldout, lambda p, t=point["threshold"]: rates_at(p.distances, p.labels, t))
    return points


#: How finely the calibration may be split: one curve, one per caution band, or one per caution band and
#: likeness (both faces estimated of one age group and gender).
BANDINGS = ("one curve", "by caution band", "by caution band and likeness")


def _band_names(pairs: ScoredPairs, banding: str) -> np.ndarray:
    if banding == BANDINGS[0]:
        return np.full(len(pairs.distances), "all", dtype=object)
    if banding == BANDINGS[1]:
        return np.where(pairs.caution, CAUTION, OTHER).astype(object)
    return pairs.bands


def _fit(pairs: ScoredPairs, method: str, banding: str):
    names = _band_names(pairs, banding)
    fitted = {band: fit_calibration(pairs.distances[names == band], pairs.labels[names == band], method,
                                    pairs.subset(names == band).weights) for band in np.unique(names)}
    return fitted["all"] if banding == BANDINGS[0] else fitted


def _apply(fitted, pairs: ScoredPairs) -> np.ndarray:
    if not isinstance(fitted, dict):
        return fitted(pairs.distances)
    answers = ModelAnswers({"probability": {"calibration": {band: curve.to_dict() for band, curve in fitted.items()}}})
    return np.array([answers.calibration(band)(distance) for band, distance in zip(pairs.bands, pairs.distances)])


def _ece(probabilities: np.ndarray, pairs: ScoredPairs) -> float:
    return expected_calibration_error(probabilities, pairs.labels, pairs.weights)


def choose_calibration(val: ScoredPairs, seed: int) -> tuple[str, str, dict]:
    """The method and banding (:data:`BANDINGS`) with the lowest ECE across a seeded two-fold split of the val
    groups (fit on one half's pairs, measure on the other's), and every candidate's figure."""
    names = np.unique(val.groups)
    half = set(np.random.default_rng(seed).permutation(names)[: len(names) // 2])
    side = np.vectorize(lambda group: group in half)(val.groups)
    folds = [val.subset(side.all(1)), val.subset(~side.any(1))]
    scores = {}
    for method in METHODS:
        for banding in BANDINGS:
            scores[f"{method} {banding}"] = float(np.mean(
                [_ece(_apply(_fit(folds[i], method, banding), folds[1 - i]), folds[1 - i]) for i in (0, 1)]))
    best = min(scores, key=scores.get)
    method, banding = best.split(" ", 1)
    return method, banding, scores


def probability_block(val: ScoredPairs, heldout: ScoredPairs, seed: int) -> dict:
    """The calibration fitted on val (method and banding chosen on val) and its figures on held-out."""
    method, banding, scores = choose_calibration(val, seed)
    fitted = _fit(val, method, banding)
    measured = _apply(fitted, heldout)
    calibration = ({band: curve.to_dict() for band, curve in fitted.items()} if isinstance(fitted, dict)
                   else fitted.to_dict())
    return {"method": method, "banding": banding, "calibration": calibration,
            "odds": "even: each class of each pair kind weighs the same, in the fit and in the figures",
            "chosen_by": {"two-fold val groups ECE": scores},
            "val": {"ece": _ece(_apply(fitted, val), val)},
            "heldout": {"ece": _ece(measured, heldout),
                        "ece_by_kind": _by_kind(heldout, lambda p: {"ece": _ece(_apply(fitted, p), p)}),
                        "reliability": reliability(measured, heldout.labels, heldout.weights)}}


def _accuracy(pairs: ScoredPairs, threshold: float) -> dict:
    right = (pairs.distances <= threshold) == (pairs.labels == 1)
    return {"pairs": len(right), "accuracy": float(np.average(right, weights=pairs.weights)) if len(right) else None}


def caution_block(rule: dict, heldout: ScoredPairs, threshold: float) -> dict:
    """The rule and the held-out accuracy (classes weighed evenly) of flagged and other pairs at ``threshold``."""
    return {**rule, "heldout": {CAUTION: _accuracy(heldout.subset(heldout.caution), threshold),
                                OTHER: _accuracy(heldout.subset(~heldout.caution), threshold)}}


def abstain_block(probability: dict, heldout: ScoredPairs, threshold: float) -> dict:
    """Per band, the distances where the calibrated probability is within (1 - level, level), and what
    answering only outside them gives on held-out pairs."""
    answers = ModelAnswers({"probability": probability, "abstain": {"bands": {}}})
    low, high = float(heldout.distances.min()), float(heldout.distances.max())
    every = [band + alike for band in (CAUTION, OTHER) for alike in ("", ALIKE)]
    bands = {band: probability_band(answers.calibration(band), ABSTAIN_LEVEL, low, high) for band in every}
    answers.block["abstain"]["bands"] = bands
    unsure = np.array([answers.unsure(d, band) for d, band in zip(heldout.distances, heldout.bands)])
    return {"level": ABSTAIN_LEVEL, "bands": bands,
            "heldout": {"share_cannot_tell": float(np.average(unsure, weights=heldout.weights)),
                        "answered": _accuracy(heldout.subset(~unsure), threshold),
                        "cannot_tell": _accuracy(heldout.subset(unsure), threshold)}}


def distributions(val: ScoredPairs) -> dict:
    """Histograms of the val distances, per pair kind and class, on shared edges."""
    start = np.floor(val.distances.min() / HISTOGRAM_WIDTH) * HISTOGRAM_WIDTH
    stop = np.ceil(val.distances.max() / HISTOGRAM_WIDTH) * HISTOGRAM_WIDTH + HISTOGRAM_WIDTH / 2
    edges = np.arange(start, stop, HISTOGRAM_WIDTH)
    body = {"of": "val pairs", "edges": [round(float(edge), 4) for edge in edges]}
    for kind in PAIR_KINDS:
        part = val.subset(val.kinds == kind)
        body[kind] = {name: np.histogram(part.distances[part.labels == label], edges)[0].tolist()
                      for name, label in (("same", 1), ("different", 0))}
    return body


def answers_block(verifier, val_index, heldout_index, ages: dict, rule: dict, balanced: dict, seed: int,
                  heldout_label: str, made_by: str) -> dict:
    """Every figure of the answers block for one model copy (``ages``: estimated ages per side)."""
    val = score_pairs(verifier, val_index, ages["val"], rule, seed)
    heldout = score_pairs(verifier, heldout_index, ages["heldout"], rule, seed)
    points = operating_points(val, heldout, balanced)
    probability = probability_block(val, heldout, seed)
    return {"made_by": made_by, "seed": seed,
            "val": {"groups": sorted(set(val_index.attributes["family"])), "images": len(val_index),
                    "pairs": counts(val)},
            "heldout": {"groups": heldout_label, "images": len(heldout_index), "pairs": counts(heldout)},
            "points": points, "probability": probability,
            "caution": caution_block(rule, heldout, points[BALANCED]["threshold"]),
            "abstain": abstain_block(probability, heldout, points[BALANCED]["threshold"]),
            "distributions": distributions(val)}


def run_val_groups(pairs_file: Path, index) -> set[str]:
    """The groups of ``index`` (its ``family`` column) whose people are in the val split of a training run's
    pair file."""
    val = read_pairs(pairs_file, index.root).select("val")
    people = set(val.identity_a) | set(val.identity_b)
    groups = index.attributes["family"]
    return {groups[row] for row in range(len(index)) if index.identity_names[index.identity_codes[row]] in people}


def update_card_answers(card_file: Path, copies: dict[str, Callable[[], object]], val_index, heldout_index,
                        *, seed: int = 0, heldout_label: str, made_by: str, age_verifier=None,
                        log: Callable[[str], None] = print) -> dict:
    """Write the answers block of every copy in ``copies`` (``"float"``: the card's top level, ``"int8"``: its
    int8 block; each a callable making that copy's verifier) into ``card_file``; return the card.

    The balanced point is the copy's own card threshold. Ages come from ``age_verifier`` (default: the first
    copy's verifier), whose attribute model estimates them once for both sides.
    """
    body = json.loads(card_file.read_text(encoding="utf-8"))
    meta = attributes_card()["meta"]
    rule = caution_rule(meta["classes"]["age"], meta["age_bins"])
    verifiers = {copy: make() for copy, make in copies.items()}
    reader = age_verifier or next(iter(verifiers.values()))
    log("estimating the ages of the val and held-out faces")
    ages = {"val": estimated_ages(reader, val_index), "heldout": estimated_ages(reader, heldout_index)}
    for copy, verifier in verifiers.items():
        log(f"scoring the {copy} copy")
        target = body["int8"] if copy == "int8" else body
        balanced = dict(target.get("threshold", body.get("threshold", {})))
        balanced.setdefault("value", verifier.threshold)
        balanced.setdefault("source", verifier.threshold_source)
        target["answers"] = answers_block(verifier, val_index, heldout_index, ages, rule, balanced, seed,
                                          heldout_label, made_by)
        write_text(card_file, json.dumps(body, indent=2) + "\n")
    return body
