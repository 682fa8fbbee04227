"""Open-set identification: rank-k rates, FPIR/FNIR, and the "no one in the gallery" threshold.

A 1:1 threshold answers "are these two the same person?"; a gallery search compares a probe with every
enrolled person, so a stranger is falsely matched far more often than one pair is falsely accepted. The
open-set threshold is therefore chosen on the *false positive identification rate* (FPIR: the share of
searches by people who are not enrolled whose best distance is within the threshold), measured by the
identification protocol (``kface benchmark identification``), and recorded in every gallery it makes.
"""
from __future__ import annotations

import numpy as np

#: FPIR the recorded open-set thresholds are chosen at.
DEFAULT_FPIR = 0.01

#: Measured open-set thresholds by model key, each with where it comes from (see docs/galleries.md,
#: "Open-set search", for the command that measured them).
OPEN_SET_THRESHOLDS: dict[str, tuple[float, str]] = {
    # Both measured on the 16 held-out groups of related families (none of their images or people seen in
    # training; copies merged): 50 people enrolled at their youngest age, 154 searches by 13 people not
    # enrolled. At FPIR 1% at most one stranger may match, so this sample bounds the thresholds coarsely.
    "dlib@dlib-resnet-v1": (0.2380, "FPIR 1% on the Korean held-out groups (50 people enrolled at their youngest "
                                    "age, 154 searches by 13 people not enrolled); FNIR there 98.2%"),
    # korean-v4: its float file's threshold (0.4411; the int8 copy's measured 0.4521): the stricter of the two.
    "korean@16562bed3fea1d9e": (0.4411, "FPIR 1% on the Korean held-out groups (50 people enrolled at their "
                                        "youngest age, 154 searches by 13 people not enrolled); FNIR there 96.7%"),
}


def open_set_threshold(model) -> tuple[float, str]:
    """The open-set threshold a new gallery of ``model`` (a ModelIdentity) records, with its source."""
    measured = OPEN_SET_THRESHOLDS.get(model.key)
    if measured is not None:
        return measured
    return model.threshold, ("not measured for open-set search: the model's 1:1 threshold (expect many false "
                             "matches); measure one with kface benchmark identification and pass "
                             "--open-set-threshold")


def threshold_at_fpir(nonmated_best: np.ndarray, fpir: float) -> float:
    """The largest distance threshold at which at most ``fpir`` of the non-mated searches match anyone.

    ``nonmated_best``: each non-mated probe's distance to its nearest enrolled person.
    """
    best = np.sort(np.asarray(nonmated_best, dtype=np.float64))
    if len(best) == 0:
        raise ValueError("no non-mated searches to choose an open-set threshold on")
    allowed = int(np.floor(fpir * len(best)))
    if allowed >= len(best):
        return float(best[-1])
    return float(np.nextafter(best[allowed], -np.inf))  # just below the first false match not allowed


def identification_rates(ranks: np.ndarray, mated_best: np.ndarray, nonmated_best: np.ndarray,
                         threshold_1to1: float, fpir: float = DEFAULT_FPIR, ks: tuple[int, ...] = (1, 5)) -> dict:
    """Closed- and open-set figures of one model.

    ``ranks``: for each mated probe, the rank (1 = first) of its true identity among the gallery's people;
    ``mated_best``: the distance of each mated probe's rank-1 answer, and whether it is the mate is
    ``ranks == 1``; ``nonmated_best``: each non-mated probe's best distance.
    """
    ranks = np.asarray(ranks)
    mated_best = np.asarray(mated_best, dtype=np.float64)
    nonmated_best = np.asarray(nonmated_best, dtype=np.float64)
    figures: dict = {f"rank{k}": float(np.mean(ranks <= k)) for k in ks}
    at_fpir = threshold_at_fpir(nonmated_best, fpir)
    figures.update({
        "fpir": fpir,
        "open_set_threshold": at_fpir,
        "fnir_at_fpir": fnir(ranks, mated_best, at_fpir),
        "fpir_achieved": float(np.mean(nonmated_best <= at_fpir)),
        "threshold_1to1": float(threshold_1to1),
        "fnir_at_1to1": fnir(ranks, mated_best, threshold_1to1),
        "fpir_at_1to1": float(np.mean(nonmated_best <= threshold_1to1)),
        "mated": int(len(ranks)), "nonmated": int(len(nonmated_best)),
    })
    return figures


def fnir(ranks: np.ndarray, mated_best: np.ndarray, threshold: float) -> float:
    """Share of mated searches whose mate is not the rank-1 answer within ``threshold`` (NIST's FNIR)."""
    return float(np.mean(~((np.asarray(ranks) == 1) & (np.asarray(mated_best) <= threshold))))


def ranks_of_mates(distances: np.ndarray, gallery_labels: np.ndarray,
                   probe_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per probe: the rank of its own identity by nearest-image distance, and the best distance overall.

    ``distances``: (probes, gallery images); ``gallery_labels``: identity code per gallery image;
    ``probe_labels``: identity code per probe (a code not in the gallery gets rank ``people + 1``).
    """
    people = np.unique(gallery_labels)
    per_person = np.full((distances.shape[0], len(people)), np.inf)
    column = np.searchsorted(people, gallery_labels)
    for j in range(len(people)):
        per_person[:, j] = distances[:, column == j].min(axis=1)
    best = per_person.min(axis=1)
    position = np.searchsorted(people, probe_labels)
    enrolled = (position < len(people)) & (people[np.minimum(position, len(people) - 1)] == probe_labels)
    own = np.where(enrolled, per_person[np.arange(len(probe_labels)), np.minimum(position, len(people) - 1)], np.inf)
    ranks = np.where(enrolled, (per_person < own[:, None]).sum(axis=1) + 1, len(people) + 1)
    return ranks, best
