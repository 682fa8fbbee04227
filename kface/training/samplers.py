"""Batch samplers for metric learning: which images go into each batch of an epoch.

:class:`IdentityBatchSampler` draws P x K batches: ``ids_per_batch`` identities, ``images_per_id``
images of each, so every batch holds same-person pairs (P * K * (K - 1) / 2 of them) and many
different-person pairs for the loss to mine (see :mod:`kface.training.losses`). Identities are walked in
a shuffled order, so over an epoch each is drawn about equally often, however many images it has.

:class:`BatchSampler` is the template. :meth:`BatchSampler.epoch_batches` makes the epoch's generator
from ``(seed, epoch)`` alone, so a resumed run draws the same batches, and hands each process of a
DDP job its share: every process draws the same global list and takes every ``world_size``-th batch,
the list padded to a multiple of ``world_size`` so every process takes as many optimiser steps.
Subclasses write :meth:`~BatchSampler.batch_count` and :meth:`~BatchSampler.sample`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Batch:
    """One batch: ``items`` (indices into the sampler's item list), their identity codes ``labels``,
    and ``mirrored`` (True where the item is to be used left-right mirrored)."""

    items: np.ndarray
    labels: np.ndarray
    mirrored: np.ndarray

    def __len__(self) -> int:
        return len(self.items)


class BatchSampler:
    """Seeded batches per epoch, split over processes (see the module docstring)."""

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"--seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)

    def epoch_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[Batch]:
        """This process's batches of ``epoch`` (same for every call with the same arguments)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        generator = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))
        count = math.ceil(self.batch_count() / world_size) * world_size
        return self.sample(generator, count)[rank::world_size]

    def batch_count(self) -> int:
        """Batches in one epoch, over all processes (before padding to a multiple of the process count)."""
        raise NotImplementedError

    def sample(self, generator: np.random.Generator, count: int) -> list[Batch]:
        """``count`` batches drawn with ``generator`` (and nothing else)."""
        raise NotImplementedError


class IdentityBatchSampler(BatchSampler):
    """P x K identity batches over items labelled by identity.

    Args:
        identities: the identity of each item (any hashable values); items of identities with a
            single item are never drawn (they make no same-person pair).
        ids_per_batch: P, the identities in a batch.
        images_per_id: K, the items drawn per identity, without repeats (all of an identity's items
            when it has fewer).
        mirror: mirror each drawn item with probability 1/2 (``Batch.mirrored``).
        seed: the seed of every draw.
        batch_groups: a group of each item (e.g. its family or gender; one per identity), or None. With
            groups, identities are walked group by group (the groups in a shuffled order, the identities
            of each shuffled), so a batch holds whole groups: its hardest negatives are relatives, or
            people of one gender.

    An epoch has as many batches as it takes to draw each usable item about once.
    """

    def __init__(self, identities: Sequence, ids_per_batch: int = 32, images_per_id: int = 4, mirror: bool = False,
                 seed: int = 0, batch_groups: Optional[Sequence] = None):
        super().__init__(seed)
        for flag, value in (("--ids-per-batch", ids_per_batch), ("--images-per-id", images_per_id)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
                raise InputError(f"{flag} must be an integer >= 2, got {value!r}")
        names, codes = np.unique(np.asarray(identities, dtype=object).astype(str), return_inverse=True)
        members = [np.flatnonzero(codes == code) for code in range(len(names))]
        self.groups = [group for group in members if len(group) >= 2]
        self.labels = codes.astype(np.int64)
        self.ids_per_batch, self.images_per_id, self.mirror = int(ids_per_batch), int(images_per_id), bool(mirror)
        if len(self.groups) < self.ids_per_batch:
            raise InputError(f"--ids-per-batch {ids_per_batch} needs at least {ids_per_batch} identities with 2 or "
                             f"more images; the training images have {len(self.groups)} (lower --ids-per-batch)")
        self.usable_items = sum(len(group) for group in self.groups)
        self.clusters = None  # identities (indices into self.groups) per batch group
        if batch_groups is not None:
            group_of = np.asarray(batch_groups, dtype=object).astype(str)
            _, cluster_of = np.unique([group_of[group[0]] for group in self.groups], return_inverse=True)
            self.clusters = [np.flatnonzero(cluster_of == k) for k in range(cluster_of.max() + 1)]

    def _order(self, generator: np.random.Generator) -> np.ndarray:
        """One round over the identities: shuffled, or group by group (see ``batch_groups``)."""
        if self.clusters is None:
            return generator.permutation(len(self.groups))
        clusters = generator.permutation(len(self.clusters))
        return np.concatenate([generator.permutation(self.clusters[k]) for k in clusters])

    def batch_count(self) -> int:
        return max(1, math.ceil(self.usable_items / (self.ids_per_batch * self.images_per_id)))

    def sample(self, generator: np.random.Generator, count: int) -> list[Batch]:
        order, position = self._order(generator), 0
        batches = []
        for _ in range(count):
            chosen: list[int] = []
            while len(chosen) < self.ids_per_batch:
                if position == len(order):  # every identity drawn once: a new round in a new order
                    order, position = self._order(generator), 0
                group = int(order[position])
                position += 1
                if group not in chosen:  # only right after a new round can an identity come again
                    chosen.append(group)
            items = np.concatenate([
                generator.choice(self.groups[group], size=min(self.images_per_id, len(self.groups[group])),
                                 replace=False)
                for group in chosen])
            mirrored = generator.random(len(items)) < 0.5 if self.mirror else np.zeros(len(items), dtype=bool)
            batches.append(Batch(items, self.labels[items], mirrored))
        return batches
