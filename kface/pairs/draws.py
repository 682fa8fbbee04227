"""The sampler's draws of same-person and different-person pairs from an identity-grouped pool of images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

# A same-identity pair index space no larger than this many times the pairs wanted from it is
# enumerated; larger ones are sampled with rejection of repeats, which then converges fast.
_DENSE_FACTOR = 3
# Identity-balanced draws of different-person pairs stop after this many rounds (see
# _balanced_negative_keys); the rest is drawn uniformly over all allowed pairs.
_BALANCED_ROUNDS = 16


@dataclass
class Pool:
    """The images pairs are drawn from, grouped by identity: ``images[offsets[g]:offsets[g]+sizes[g]]``."""

    images: np.ndarray  # index rows, grouped by identity, in a seeded order within each group
    identities: np.ndarray  # identity code per group
    offsets: np.ndarray
    sizes: np.ndarray


def positive_capacity(sizes: np.ndarray) -> int:
    """Same-person pairs the identities of these sizes can give."""
    return int(np.sum(sizes * (sizes - 1) // 2))


def negative_capacity(pool: Pool, groups: np.ndarray, strata: Optional[np.ndarray]) -> int:
    """Different-person pairs the groups can give (within each stratum when ``strata`` is given)."""
    if strata is None:
        sizes = pool.sizes[groups]
        return int((int(sizes.sum()) ** 2 - int(np.sum(sizes ** 2))) // 2)
    _, _, block_sizes, block_strata = _blocks(pool, groups, strata)
    total = 0
    for stratum in np.unique(block_strata):
        sizes = block_sizes[block_strata == stratum]
        total += (int(sizes.sum()) ** 2 - int(np.sum(sizes ** 2))) // 2
    return total


def _blocks(pool: Pool, groups: np.ndarray, strata: Optional[np.ndarray]):
    """The split's images as contiguous blocks of one (stratum, identity) each, sorted by stratum.

    Returns ``(images, block_offsets, block_sizes, block_strata)``; ``images`` are pool positions, and
    images without a stratum (missing labels, hard negatives only) are left out.
    """
    if len(groups) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    positions = np.concatenate([np.arange(pool.offsets[g], pool.offsets[g] + pool.sizes[g]) for g in groups])
    owner = np.repeat(np.arange(len(groups)), pool.sizes[groups])
    stratum = strata[positions] if strata is not None else np.zeros(len(positions), dtype=np.int64)
    keep = stratum >= 0
    positions, owner, stratum = positions[keep], owner[keep], stratum[keep]
    order = np.lexsort((owner, stratum))  # stable: keeps the seeded order within each block
    positions, owner, stratum = positions[order], owner[order], stratum[order]
    starts = np.flatnonzero(np.r_[True, (owner[1:] != owner[:-1]) | (stratum[1:] != stratum[:-1])])[:len(positions)]
    sizes = np.diff(np.r_[starts, len(positions)])
    return positions, starts, sizes, stratum[starts]


def draw_positives(pool: Pool, groups: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct same-identity pairs, as a flat array of index rows (a0, b0, a1, b1, ...)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    sizes = pool.sizes[groups]
    capacity = sizes * (sizes - 1) // 2
    quota = _even_quota(capacity, count, rng)
    group, pair_number = _distinct_per_group(capacity, quota, rng)
    # Pair number k of a group enumerates (0,1), (0,2), (1,2), (0,3), ...: k = b(b-1)/2 + a, a < b.
    second = np.floor((1 + np.sqrt(1 + 8 * pair_number.astype(np.float64))) / 2).astype(np.int64)
    second -= second * (second - 1) // 2 > pair_number
    second += (second + 1) * second // 2 <= pair_number
    first = pair_number - second * (second - 1) // 2
    base = pool.offsets[groups][group]
    return np.stack([pool.images[base + first], pool.images[base + second]], axis=1).ravel()


def _even_quota(capacity: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Pairs per identity: the same for all (water-filling up to each one's capacity), the remainder
    one each to identities drawn with the seed."""
    low, high = 0, int(capacity.max())
    while low < high:  # the highest level whose filled total does not exceed count
        level = (low + high + 1) // 2
        if int(np.minimum(capacity, level).sum()) <= count:
            low = level
        else:
            high = level - 1
    quota = np.minimum(capacity, low)
    remainder = count - int(quota.sum())
    if remainder:
        room = np.flatnonzero(capacity > quota)
        quota[rng.choice(room, size=remainder, replace=False)] += 1
    return quota


def _distinct_per_group(capacity: np.ndarray, quota: np.ndarray,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each group g, ``quota[g]`` distinct numbers from ``range(capacity[g])``, drawn uniformly.

    Returns ``(group, number)`` arrays. Groups asking for a large share of their range enumerate it;
    the others draw with replacement and discard repeats until they have enough.
    """
    dense = (capacity <= _DENSE_FACTOR * quota) & (quota > 0)
    sparse = ~dense & (quota > 0)
    groups, numbers = [], []
    if np.any(dense):
        dense_groups = np.flatnonzero(dense)
        group = np.repeat(dense_groups, capacity[dense_groups])
        starts = np.repeat(np.cumsum(capacity[dense_groups]) - capacity[dense_groups], capacity[dense_groups])
        number = np.arange(len(group)) - starts
        groups.append(group)
        numbers.append(number)
    if np.any(sparse):
        sparse_groups = np.flatnonzero(sparse)
        keys = np.zeros(0, dtype=np.int64)
        span = int(capacity.max())
        needed = quota[sparse_groups]
        while True:  # each draw is new with probability >= 1 - 1/_DENSE_FACTOR
            have = np.bincount(keys // span, minlength=len(capacity))[sparse_groups]
            short = needed - have
            if not np.any(short > 0):
                break
            draw = np.where(short > 0, short + short // 8 + 2, 0)
            group = np.repeat(sparse_groups, draw)
            number = rng.integers(0, capacity[group])
            keys = np.unique(np.concatenate([keys, group * span + number]))
        groups.append(keys // span)
        numbers.append(keys % span)
    group = np.concatenate(groups)
    number = np.concatenate(numbers)
    # Keep quota[g] of each group's candidates, chosen by random keys (candidates come sorted).
    order = np.lexsort((rng.random(len(group)), group))
    group, number = group[order], number[order]
    first_of_group = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    rank = np.arange(len(group)) - np.repeat(first_of_group, np.diff(np.r_[first_of_group, len(group)]))
    keep = rank < quota[group]
    return group[keep], number[keep]


def draw_negatives(pool: Pool, groups: np.ndarray, count: int, rng: np.random.Generator,
                    strata: Optional[np.ndarray]) -> np.ndarray:
    """``count`` distinct different-identity pairs (same stratum when ``strata`` is given), flat."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    positions, offsets, sizes, block_strata = _blocks(pool, groups, strata)
    total = len(positions)
    # Blocks of one stratum are contiguous; each image pairs with every image of the later blocks of its
    # stratum, which numbers every allowed unordered pair exactly once.
    stratum_first = np.flatnonzero(np.r_[True, block_strata[1:] != block_strata[:-1]])
    stratum_blocks = np.diff(np.r_[stratum_first, len(block_strata)])
    stratum_of_block = np.repeat(np.arange(len(stratum_first)), stratum_blocks)
    block_of_image = np.repeat(np.arange(len(sizes)), sizes)
    partner_start = (offsets + sizes)[block_of_image]
    stratum_last_block = stratum_first + stratum_blocks - 1
    partner_count = (offsets + sizes)[stratum_last_block][stratum_of_block[block_of_image]] - partner_start
    capacity = int(partner_count.sum())
    if capacity <= _DENSE_FACTOR * count:
        first = np.repeat(np.arange(total), partner_count)
        exclusive = np.cumsum(partner_count) - partner_count
        second = np.repeat(partner_start - exclusive, partner_count) + np.arange(capacity)
        chosen = rng.choice(capacity, size=count, replace=False)
        keys = first[chosen] * total + second[chosen]
    else:
        keys = _balanced_negative_keys(offsets, sizes, stratum_first, stratum_blocks, stratum_of_block, count,
                                       rng, total)
        if len(keys) < count:
            keys = _uniform_negative_keys(keys, partner_start, partner_count, count, rng, total)
    pairs = np.stack([keys // total, keys % total], axis=1)
    return pool.images[positions[pairs]].ravel()


def _balanced_negative_keys(offsets, sizes, stratum_first, stratum_blocks, stratum_of_block, count, rng,
                            total) -> np.ndarray:
    """Up to ``count`` distinct pair keys (``low * total + high``), in draw order: a block (identity) drawn
    uniformly, another block of its stratum, then an image of each, repeats discarded.

    Identity-first drawing keeps large identities from dominating. When few identities hold most of
    the allowed pairs, such draws keep repeating themselves; the caller then tops up uniformly.
    """
    candidates = np.flatnonzero(stratum_blocks[stratum_of_block] >= 2)
    keys = np.zeros(0, dtype=np.int64)
    for _ in range(_BALANCED_ROUNDS):
        missing = count - len(keys)
        draw = missing + missing // 8 + 16
        block_a = candidates[rng.integers(0, len(candidates), size=draw)]
        stratum = stratum_of_block[block_a]
        block_b = stratum_first[stratum] + rng.integers(0, stratum_blocks[stratum] - 1)
        block_b += block_b >= block_a  # any block of the stratum but block_a
        image_a = offsets[block_a] + (rng.random(draw) * sizes[block_a]).astype(np.int64)
        image_b = offsets[block_b] + (rng.random(draw) * sizes[block_b]).astype(np.int64)
        new = np.minimum(image_a, image_b) * total + np.maximum(image_a, image_b)
        keys = _first_distinct(np.concatenate([keys, new]), count)
        if len(keys) == count:
            break
    return keys


def _uniform_negative_keys(keys: np.ndarray, partner_start: np.ndarray, partner_count: np.ndarray, count: int,
                           rng: np.random.Generator, total: int) -> np.ndarray:
    """Add pairs drawn uniformly over all allowed pairs to ``keys`` until there are ``count``.

    Used only when the capacity exceeds the request several times over, so repeats stay rare.
    """
    ends = np.cumsum(partner_count)
    while len(keys) < count:
        missing = count - len(keys)
        number = rng.integers(0, int(ends[-1]), size=missing + missing // 2 + 16)
        first = np.searchsorted(ends, number, side="right")
        second = partner_start[first] + (number - (ends[first] - partner_count[first]))
        keys = _first_distinct(np.concatenate([keys, first * total + second]), count)
    return keys


def _first_distinct(keys: np.ndarray, limit: int) -> np.ndarray:
    """The first ``limit`` distinct values of ``keys``, in their order of first appearance."""
    _, first_seen = np.unique(keys, return_index=True)
    return keys[np.sort(first_seen)[:limit]]
