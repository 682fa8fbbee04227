"""The held-out Korean families every shipped Korean model is scored on."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import MODELS_DIR

HELDOUT_FILE = MODELS_DIR / "korean-heldout-families.txt"
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 0
SOURCE = ("AI-Hub (Korea) family-relation face images, age subset, as re-hosted publicly on GitHub "
          "(ndb796/korean_face_age_dataset, commit 5d10e563): 10,025 crops of 896 people in 299 families")


def choose_heldout(families: list[str], fraction: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED) -> list[str]:
    """A seeded ``fraction`` of the distinct family names, sorted."""
    names = sorted(set(families))
    count = max(1, round(fraction * len(names)))
    chosen = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
    return sorted(names[i] for i in chosen)


def write_heldout(root: Path) -> list[str]:
    from ..datasets import load_dataset
    from ..outputs import write_text

    index = load_dataset("csv", root, manifest=root / "identities.csv")
    heldout = choose_heldout(index.attributes["family"])
    header = (f"# Families held out of every shipped Korean model's training: {len(heldout)} of "
              f"{len(set(index.attributes['family']))} ({HELDOUT_FRACTION:.0%}, seed {HELDOUT_SEED}).\n"
              f"# Made by: python -m kface.models.build heldout --root <korean_family>\n")
    write_text(HELDOUT_FILE, header + "\n".join(heldout) + "\n")
    return heldout
