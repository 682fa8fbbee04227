"""The family-disjoint k-fold verification protocol (``kface benchmark families``).

Korean family albums (and AI-Hub's family sets) hold relatives who look alike, so every split here is by
family: the families are shuffled with the seed and dealt into ``folds`` folds; each fold's pairs come
from its own families only. Two kinds of pair per fold:

- ``cross-age``: same-person pairs of two different age classes, different-person pairs drawn at random;
- ``same-age-hard``: same-person pairs within one age class, different-person pairs of the same gender
  and age class (the hard negatives a Korean verifier meets most).

A fixed model is scored on every fold at its own threshold (what ``kface verify`` answers with) and at
one chosen by ``rule`` on the other folds' pairs (what a user who measures on their own families gets).
A training recipe (a JSON of ``kface train`` settings) is trained once per fold on the other folds'
families (a tenth of them for val, which picks the epoch and the threshold) and scored on the held-out
fold at the threshold its own val chose. Every draw comes from ``SeedSequence(seed)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from ..pairs import identity_groups

PAIR_KINDS = ("cross-age", "same-age-hard")


@dataclass(frozen=True)
class FamilyProtocol:
    """The protocol's settings, recorded in what it writes."""

    folds: int = 5
    pairs_per_class: int = 400  # same and different pairs of each kind, per fold
    seed: int = 0
    group_by: str = "family"
    age_column: str = "age_class"
    rule: str = "max-accuracy"
    scored_folds: Optional[int] = None  # a cut run: only the first N folds train and score (dealt as for all)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise InputError(f"--folds: the protocol needs at least 2 folds, got {self.folds}")
        if self.scored_folds is not None and not 1 <= self.scored_folds <= self.folds:
            raise InputError(f"--scored-folds: expected 1 to --folds ({self.folds}), got {self.scored_folds}")
        if self.pairs_per_class < 1:
            raise InputError(f"--pairs-per-class: expected 1 or more, got {self.pairs_per_class}")

    @property
    def scored(self) -> int:
        """How many folds (the first ones) are trained and scored."""
        return self.folds if self.scored_folds is None else self.scored_folds


@dataclass
class ProtocolPairs:
    """Pairs as index rows of the dataset, with label (1 same), kind and fold per pair."""

    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    folds: np.ndarray


def family_folds(index, protocol: FamilyProtocol) -> np.ndarray:
    """The fold of every image of ``index``: whole families dealt round-robin after a seeded shuffle."""
    per_identity = identity_groups(index, np.arange(len(index.identity_names)), protocol.group_by)
    groups = np.unique(per_identity)
    if len(groups) < protocol.folds:
        raise InputError(f"--folds {protocol.folds}: the data has only {len(groups)} {protocol.group_by} groups")
    rng = np.random.default_rng(np.random.SeedSequence(protocol.seed).spawn(1)[0])
    fold_of_group = np.empty(int(groups.max()) + 1, dtype=np.int64)
    fold_of_group[groups[rng.permutation(len(groups))]] = np.arange(len(groups)) % protocol.folds
    return fold_of_group[per_identity][index.identity_codes]


def protocol_pairs(index, image_folds: np.ndarray, protocol: FamilyProtocol) -> ProtocolPairs:
    """``pairs_per_class`` same and different pairs of each kind in each fold of ``image_folds`` (fewer
    where a fold has fewer candidates), drawn uniformly from every allowed pair of the fold's images."""
    ages = _column(index, protocol.age_column)
    genders = _column(index, "gender")
    identities = index.identity_codes
    fold_count = int(image_folds.max()) + 1
    streams = np.random.SeedSequence(protocol.seed).spawn(2)[1].spawn(fold_count * len(PAIR_KINDS))
    parts = []
    for fold in range(fold_count):
        rows = np.flatnonzero(image_folds == fold)
        a, b = np.triu_indices(len(rows), k=1)
        a, b = rows[a], rows[b]
        same_person = identities[a] == identities[b]
        same_age = ages[a] == ages[b]
        for number, kind in enumerate(PAIR_KINDS):
            rng = np.random.default_rng(streams[fold * len(PAIR_KINDS) + number])
            if kind == "cross-age":
                positive, negative = same_person & ~same_age, ~same_person
            else:
                positive = same_person & same_age
                negative = ~same_person & same_age & (genders[a] == genders[b])
            for label, allowed in ((1, positive), (0, negative)):
                candidates = np.flatnonzero(allowed)
                chosen = rng.choice(candidates, size=min(protocol.pairs_per_class, len(candidates)), replace=False)
                chosen.sort()
                parts.append((a[chosen], b[chosen], np.full(len(chosen), label), np.full(len(chosen), kind, object),
                              np.full(len(chosen), fold)))
    first, second, labels, kinds, folds = (np.concatenate(column) for column in zip(*parts))
    return ProtocolPairs(first, second, labels.astype(np.int64), kinds, folds.astype(np.int64))


def _column(index, name: str) -> np.ndarray:
    values = index.attributes.get(name)
    if values is None or any(value is None for value in values):
        raise InputError(f"the family protocol needs a {name!r} label on every image "
                         f"(the {index.kind} dataset's columns: {', '.join(sorted(index.attributes))})")
    return np.array([str(value) for value in values], dtype=object)


def _subset(pairs: ProtocolPairs, keep: np.ndarray) -> ProtocolPairs:
    return ProtocolPairs(pairs.first[keep], pairs.second[keep], pairs.labels[keep], pairs.kinds[keep],
                         pairs.folds[keep])

