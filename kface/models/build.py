"""The committed commands that make kface's shipped model files (run from the repository root).

    python -m kface.models.build heldout --root ../shared/data/korean_family
        writes kface/models/korean-heldout-families.txt: a seeded tenth of the families, never trained on;
        the model cards and the tests score the shipped models on these families only.
    python -m kface.models.build korean --root ../shared/data/korean_family
        trains kface/models/recipes/korean-v1.json on every other family (kface train, family-disjoint val),
        exports the tuned network to kface/models/korean-v1.onnx and writes its card korean-v1.json
        (provenance, recipe, threshold, sha256, figures on the held-out families).
"""
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kface.models.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["heldout", "korean"])
    parser.add_argument("--root", type=Path, required=True, help="the korean_family folder")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.step == "heldout":
        print(f"held out {len(write_heldout(args.root))} families into {HELDOUT_FILE}")
    else:
        from .korean import build_korean

        print(build_korean(args.root, device=args.device))


if __name__ == "__main__":
    main()
