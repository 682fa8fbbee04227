"""The held-out Korean families every shipped Korean model is scored on, and the split around them."""
from __future__ import annotations

from pathlib import Path
from typing import Container, Optional

import numpy as np

from ..datasets import load_dataset
from ..errors import InputError
from ..models import MODELS_DIR
from ..util.outputs import write_text
from .groups import distinct_images, read_group_list, subset_index

HELDOUT_FILE = MODELS_DIR / "korean-heldout-families.txt"
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 0
SOURCE = ("AI-Hub (Korea) family-relation face images, age subset, as re-hosted publicly on GitHub "
          "(ndb796/korean_face_age_dataset, commit 5d10e563)")


def choose_heldout(groups: list[str], fraction: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED) -> list[str]:
    """A seeded ``fraction`` of the distinct group names, sorted."""
    names = sorted(set(groups))
    count = max(1, round(fraction * len(names)))
    chosen = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
    return sorted(names[i] for i in chosen)


def merged_index(root: Path, families: Optional[Container[str]] = None):
    """The korean_family index (``families``: only those families) with each image once and each person once.

    The set files one scan under several identities (a grandparent shared by two families appears under
    both family numbers): identities sharing an image are one person, and families sharing a person are
    one group, named ``F1+F2`` in the ``family`` column (:func:`kface.evaluation.groups.distinct_images`).
    """
    index = load_dataset("csv", root, manifest=root / "identities.csv")
    rows = [row for row, family in enumerate(index.attributes["family"]) if families is None or family in families]
    return distinct_images(index, np.array(rows, dtype=np.int64), "family")[0]


def source_text(root: Path) -> str:
    """What a model card says it was made from: the source and the set's counts, read from the data."""
    crops = load_dataset("csv", root, manifest=root / "identities.csv")
    merged = merged_index(root)
    return (f"{SOURCE}: {len(crops):,} crops of {len(crops.identity_names):,} people in "
            f"{len(set(crops.attributes['family'])):,} families, {len(merged):,} distinct images of "
            f"{len(merged.identity_names):,} people in {len(set(merged.attributes['family'])):,} groups of related "
            f"families once copies are merged")


def korean_split(root: Path, families: Optional[Container[str]] = None) -> tuple:
    """(training index, held-out index) of the merged set (``families``: only those): the groups in
    :data:`HELDOUT_FILE` and the rest, so no image and no person is on both sides."""
    index = merged_index(root, families)
    heldout = read_group_list(HELDOUT_FILE)
    is_heldout = np.array([any(part in heldout for part in group.split("+")) for group in index.attributes["family"]])
    return subset_index(index, np.flatnonzero(~is_heldout)), subset_index(index, np.flatnonzero(is_heldout))


def write_heldout(root: Path) -> list[str]:
    """Choose the held-out groups and write :data:`HELDOUT_FILE`; an existing list is kept, never redrawn."""
    if HELDOUT_FILE.is_file():
        # Families added to the set later only train: a redrawn list would score old and new models on
        # different faces.
        raise InputError(f"{HELDOUT_FILE} exists and keeps its groups (every shipped Korean model is scored on "
                         f"them); delete it to choose anew")
    groups = merged_index(root).attributes["family"]
    heldout = choose_heldout(groups)
    header = (f"# Groups of related families held out of every shipped Korean model's training: {len(heldout)} "
              f"of {len(set(groups))} ({HELDOUT_FRACTION:.0%}, seed {HELDOUT_SEED}); families joined by a person "
              f"filed under both are one group (F1+F2).\n"
              f"# Made by: python -m kface.build heldout --root <korean_family>\n")
    write_text(HELDOUT_FILE, header + "\n".join(heldout) + "\n")
    return heldout
