"""The pair sampler: a dataset index and a PairRequest in, a PairSet (or a written pair file) out.

The sampler (:func:`sample_pairs`) draws, from a :class:`~kface.datasets.DatasetIndex`:

- identity-disjoint splits (an identity's images all fall in one split), or group-disjoint ones with
  ``group_by`` (e.g. ``family``: related people, who look alike, never straddle two splits);
- exactly the requested negative:positive ratio in every split;
- same-person pairs spread as evenly as possible over identities (each identity gives about the same
  number, up to all the pairs it has), never a self-pair, never the same two images twice;
- different-person pairs drawn identity first (so a person with 500 images weighs as much as one with
  5), optionally hard (both images of the same gender and age band);
- optionally ``K`` images per identity, chosen with the seed and spread over the layout's conditions.

Every random draw comes from ``numpy.random.SeedSequence(seed)``, one child stream per purpose, so the
same index and request give a byte-identical file. Requests that the data cannot meet fail before
anything is written, saying what is achievable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .. import __version__
from ..datasets import ADAPTERS, DatasetIndex, age_group
from ..errors import InputError
from .draws import Pool, draw_negatives, draw_positives, negative_capacity, positive_capacity
from .files import FORMAT, FORMAT_VERSION, SPLITS, PairRequest, PairSet, object_array, write_pairs

#: Attributes that hard negatives match on, where the dataset has them.
HARD_NEGATIVE_KEYS = ("gender", "age")


@dataclass
class _SplitPlan:
    name: str
    groups: np.ndarray  # group numbers of the pool in this split
    negatives: int
    positives: int
    positive_capacity: int = 0
    negative_capacity: int = 0


def require_identities(kind: str) -> None:
    """Refuse, before any indexing, a layout whose images are all different people (All-Age-Faces)."""
    adapter = ADAPTERS.get(kind)
    if adapter is not None and not adapter.has_identities:
        raise InputError(f"--dataset {kind}: every image is a different person, so there are no same-person "
                         f"pairs to make; this set serves age and gender training (train-attributes), "
                         f"not make-pairs")


def sample_pairs(index: DatasetIndex, request: PairRequest) -> PairSet:
    """Draw the pairs ``request`` asks for from ``index`` (see the module docstring for the rules).

    Raises :class:`InputError`, before anything is drawn, when the layout has no identities (All-Age-
    Faces) or when the identities and images cannot give the requested pairs; the message says how many
    pairs are achievable.
    """
    require_identities(index.kind)
    streams = [np.random.default_rng(child) for child in np.random.SeedSequence(request.seed).spawn(4)]
    select_rng, split_rng, positive_rng, negative_rng = streams
    pool, excluded = _build_pool(index, request.images_per_identity, select_rng)
    strata = _strata(index, pool) if request.hard_negatives else None
    groups = identity_groups(index, pool.identities, request.group_by) if request.group_by else None
    plans = _plan_splits(pool, request, split_rng, strata, groups)
    split_names, firsts, seconds, labels = [], [], [], []
    for plan, positive_stream, negative_stream in zip(plans, positive_rng.spawn(3), negative_rng.spawn(3)):
        if plan.positives + plan.negatives == 0:
            continue
        same = draw_positives(pool, plan.groups, plan.positives, positive_stream)
        different = draw_negatives(pool, plan.groups, plan.negatives, negative_stream, strata)
        pair_rows = np.concatenate([same, different]).reshape(-1, 2)
        # Random side per pair and a shuffled row order, so neither position nor order gives a label away.
        swap = negative_stream.random(len(pair_rows)) < 0.5
        pair_rows[swap] = pair_rows[swap][:, ::-1]
        pair_labels = np.concatenate([np.ones(len(same) // 2, np.int8), np.zeros(len(different) // 2, np.int8)])
        order = negative_stream.permutation(len(pair_rows))
        firsts.append(pair_rows[order, 0])
        seconds.append(pair_rows[order, 1])
        labels.append(pair_labels[order])
        split_names.append(np.full(len(order), plan.name, dtype=object))
    first = np.concatenate(firsts)
    second = np.concatenate(seconds)
    paths = object_array(index.paths)
    names = object_array(index.identity_names)
    manifest = _manifest(index, request, pool, plans, excluded)
    return PairSet(split=np.concatenate(split_names), path_a=paths[first], path_b=paths[second],
                   label=np.concatenate(labels), identity_a=names[index.identity_codes[first]],
                   identity_b=names[index.identity_codes[second]], root=index.root, manifest=manifest)


def _build_pool(index: DatasetIndex, per_identity: Optional[int],
                rng: np.random.Generator) -> tuple[Pool, dict]:
    """Group usable images by identity in a seeded order; keep ``per_identity`` of each, if asked."""
    codes = index.identity_codes
    excluded: dict = {}
    usable = np.ones(len(codes), dtype=bool)
    if "" in index.identity_names:
        usable &= codes != index.identity_names.index("")
        excluded["images_without_identity"] = int(np.sum(~usable))
    edited = index.edited_mask()
    if edited.any():  # edits train identity batches (every image of a train identity), never a pair
        usable &= ~edited
        excluded["edited_images"] = int(edited.sum())
    rows = np.flatnonzero(usable)
    # Sorting by (identity, random key) groups the images and shuffles them within each group at once.
    rows = rows[np.lexsort((rng.random(len(rows)), codes[rows]))]
    identities, offsets, sizes = np.unique(codes[rows], return_index=True, return_counts=True)
    if per_identity is not None:
        enough = sizes >= per_identity
        excluded["identities_with_fewer_images"] = int(np.sum(~enough))
        if not np.any(enough):
            raise InputError(f"--images-per-identity {per_identity}: no identity has that many images "
                             f"(the most any has is {int(sizes.max()) if len(sizes) else 0})")
        conditions = _condition_codes(index, index.conditions)
        chosen = []
        for offset, size in zip(offsets[enough], sizes[enough]):
            group = rows[offset:offset + size]
            chosen.append(group[_spread(conditions[group], per_identity)] if conditions is not None
                          else group[:per_identity])
        rows = np.concatenate(chosen)
        identities = identities[enough]
        sizes = np.full(len(identities), per_identity, dtype=np.int64)
        offsets = np.arange(len(identities), dtype=np.int64) * per_identity
    return Pool(rows, identities, offsets.astype(np.int64), sizes.astype(np.int64)), excluded


def _condition_codes(index: DatasetIndex, names: tuple[str, ...]) -> Optional[np.ndarray]:
    """One integer column per condition attribute (ages by decade); None when the layout has none."""
    columns = []
    for name in names:
        values = index.attributes.get(name)
        if values is None:
            continue
        if name == "age":
            values = [age_group(value) for value in values]
        mapping: dict = {}
        columns.append([mapping.setdefault(value, len(mapping)) for value in values])
    if not columns:
        return None
    return np.array(columns, dtype=np.int64).T


def _spread(conditions: np.ndarray, count: int) -> np.ndarray:
    """Positions of ``count`` rows chosen greedily so that each condition's values are used evenly.

    Each step takes the first row (rows come in a seeded order) whose condition values have been used
    least so far, summed over the conditions.
    """
    shifted = conditions + np.concatenate([[0], np.cumsum(conditions.max(axis=0) + 1)[:-1]])
    used = np.zeros(int(shifted.max()) + 1, dtype=np.int64)
    taken = np.zeros(len(conditions), dtype=bool)
    chosen = []
    for _ in range(count):
        score = used[shifted].sum(axis=1)
        score[taken] = np.iinfo(np.int64).max
        pick = int(np.argmin(score))
        chosen.append(pick)
        taken[pick] = True
        used[shifted[pick]] += 1
    return np.array(chosen, dtype=np.int64)


def _strata(index: DatasetIndex, pool: Pool) -> np.ndarray:
    """Hard-negative stratum per pool image (same gender and age band), -1 where a label is missing."""
    keys = [key for key in HARD_NEGATIVE_KEYS if key in index.attributes]
    if not keys:
        raise InputError(f"--hard-negatives needs gender or age labels, and the {index.kind} dataset has "
                         f"neither; leave the option out")
    columns = []
    for key in keys:
        values = [index.attributes[key][row] for row in pool.images]
        columns.append([age_group(value) if key == "age" else value for value in values])
    mapping: dict = {}
    strata = np.empty(len(pool.images), dtype=np.int64)
    for position, combination in enumerate(zip(*columns)):
        strata[position] = -1 if None in combination else mapping.setdefault(combination, len(mapping))
    if not mapping:
        raise InputError(f"--hard-negatives: no image has both a {' and '.join(keys)} label")
    return strata


def _largest_remainder(total: int, shares: tuple[float, ...]) -> np.ndarray:
    """Integers summing to ``total`` in proportion to ``shares`` (Hamilton's method)."""
    exact = np.array(shares, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    shortfall = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:shortfall]] += 1
    return counts


def identity_groups(index: DatasetIndex, identities: np.ndarray, column: str) -> np.ndarray:
    """The group code (e.g. family) of each identity code in ``identities``, from attribute ``column``.

    Every image of an identity must name the same, non-empty group: an :class:`InputError` says which
    identity breaks that, or that the dataset has no such column.
    """
    values = index.attributes.get(column)
    if values is None:
        known = ", ".join(sorted(index.attributes)) or "none"
        raise InputError(f"--group-by {column}: the {index.kind} dataset has no {column!r} column "
                         f"(its columns: {known})")
    group_of: dict[int, str] = {}
    for code, value in zip(index.identity_codes.tolist(), values):
        if value is None or value == "":
            raise InputError(f"--group-by {column}: identity {index.identity_names[code]!r} has an image "
                             f"with no {column}")
        if group_of.setdefault(code, value) != value:
            raise InputError(f"--group-by {column}: identity {index.identity_names[code]!r} is in two "
                             f"groups ({group_of[code]!r} and {value!r})")
    names = sorted(set(group_of.values()))
    code_of = {name: number for number, name in enumerate(names)}
    return np.array([code_of[group_of[int(code)]] for code in identities], dtype=np.int64)


def split_groups(groups: np.ndarray, shares: tuple[float, float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """The split number (0 train, 1 val, 2 test) of each item of ``groups`` (group codes): whole groups
    are shuffled with ``rng`` and shared out by count (largest remainder), so no group straddles two."""
    names = np.unique(groups)
    names = names[rng.permutation(len(names))]
    bounds = np.concatenate([[0], np.cumsum(_largest_remainder(len(names), shares))])
    split_of_name = np.empty(int(groups.max()) + 1 if len(groups) else 0, dtype=np.int64)
    for split_number in range(len(SPLITS)):
        split_of_name[names[bounds[split_number]:bounds[split_number + 1]]] = split_number
    return split_of_name[groups]


def _plan_splits(pool: Pool, request: PairRequest, rng: np.random.Generator,
                 strata: Optional[np.ndarray], groups: Optional[np.ndarray] = None) -> list[_SplitPlan]:
    """Assign identities (or, with ``groups``, whole groups of identities) to splits, fix each split's
    pair counts, and check that they can be met."""
    negatives_unit, positives_unit = request.ratio.reduced
    unit = negatives_unit + positives_unit
    if request.pairs % unit:
        lower = request.pairs - request.pairs % unit
        raise InputError(f"--pairs {request.pairs} cannot be split exactly {request.ratio}: the count must be "
                         f"a multiple of {unit}, e.g. {lower or unit} or {lower + unit}")
    # Identities with two or more images (the only source of same-person pairs) and the rest are shared
    # out separately, so every split gets its share of both.
    split_of_group = np.empty(len(pool.identities), dtype=np.int64)
    if groups is not None:
        split_of_group[:] = split_groups(groups, request.split, rng)
    else:
        for members in (np.flatnonzero(pool.sizes >= 2), np.flatnonzero(pool.sizes < 2)):
            members = members[rng.permutation(len(members))]
            bounds = np.concatenate([[0], np.cumsum(_largest_remainder(len(members), request.split))])
            for split_number in range(len(SPLITS)):
                split_of_group[members[bounds[split_number]:bounds[split_number + 1]]] = split_number
    plans = [_SplitPlan(name, np.flatnonzero(split_of_group == number), 0, 0)
             for number, name in enumerate(SPLITS)]
    for plan in plans:
        plan.positive_capacity = positive_capacity(pool.sizes[plan.groups])
        plan.negative_capacity = negative_capacity(pool, plan.groups, strata)

    def allocate(total_units: int) -> None:
        for plan, units in zip(plans, _largest_remainder(total_units, request.split)):
            plan.negatives, plan.positives = int(units) * negatives_unit, int(units) * positives_unit

    def feasible() -> bool:
        return all(plan.positives <= plan.positive_capacity and plan.negatives <= plan.negative_capacity
                   for plan in plans)

    requested_units = request.pairs // unit
    allocate(requested_units)
    if feasible():
        return plans
    shortages = [_shortage(plan, pool) for plan in plans
                 if plan.positives > plan.positive_capacity or plan.negatives > plan.negative_capacity]
    achievable = _achievable_units(requested_units, allocate, feasible) * unit
    kind = "hard different-person" if strata is not None else "different-person"
    raise InputError(
        f"cannot make {request.pairs} pairs at {request.ratio} with split "
        f"{':'.join(f'{share:g}' for share in request.split)}: " + "; ".join(shortages).replace(
            "different-person", kind)
        + f"; at most {achievable} pairs are achievable with this ratio and split"
        + (" (fewer --pairs, another --split or --ratio, or more identities)" if achievable else
           " (the data needs more identities with two or more images in every split)"))


def _achievable_units(requested: int, allocate, feasible) -> int:
    # Feasibility grows back as the count falls; binary search, then confirm downward.
    low, high = 0, requested
    while low < high:
        middle = (low + high + 1) // 2
        allocate(middle)
        if feasible():
            low = middle
        else:
            high = middle - 1
    while low > 0:
        allocate(low)
        if feasible():
            break
        low -= 1
    return low


def _shortage(plan: _SplitPlan, pool: Pool) -> str:
    sizes = pool.sizes[plan.groups]
    limits = [f"{capacity} {kind} pairs ({needed} needed)"
              for kind, capacity, needed in (("same-person", plan.positive_capacity, plan.positives),
                                             ("different-person", plan.negative_capacity, plan.negatives))
              if needed > capacity]
    count = f"{len(sizes)} identit{'y' if len(sizes) == 1 else 'ies'}"
    return (f"the {plan.name} split's {count} ({int(np.sum(sizes >= 2))} with two or more images) allow only "
            f"{' and '.join(limits)}")

def _manifest(index: DatasetIndex, request: PairRequest, pool: Pool, plans: list[_SplitPlan],
              excluded: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kface_version": __version__,
        "dataset": {"kind": index.kind, "root": str(index.root), "images": len(index),
                    "identities": len(index.identity_names), "problems": index.problems.to_dict()},
        "filters": index.options,
        "ratio": str(request.ratio),
        "negative_fraction": request.ratio.negative_fraction,
        "pairs": request.pairs,
        "split": dict(zip(SPLITS, request.split)),
        "images_per_identity": request.images_per_identity,
        "hard_negatives": request.hard_negatives,
        "group_by": request.group_by,
        "seed": request.seed,
        "sampler": {"identities_used": len(pool.identities), "images_used": len(pool.images), **excluded},
        "counts": {plan.name: {"same": plan.positives, "different": plan.negatives,
                               "identities": len(plan.groups),
                               "images": int(pool.sizes[plan.groups].sum())}
                   for plan in plans if plan.positives + plan.negatives},
    }


def make_pair_file(index: DatasetIndex, request: PairRequest, out: Union[str, os.PathLike]) -> tuple[PairSet, Path]:
    """Sample ``request``'s pairs from ``index`` and write them to ``out`` (the CSV and its JSON manifest beside
    it); return the pairs and the manifest's path. Nothing is written when the request cannot be met."""
    pairs = sample_pairs(index, request)
    return pairs, write_pairs(pairs, out)
