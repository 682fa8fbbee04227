"""Old-album augmentation as a lever for the Korean model: the shipped recipe trained with and without
degraded copies of its training images, both scored on the held-out groups.

    .venv/bin/python bench/album_augmentation.py --root ../shared/data/korean_family --work /tmp/album \\
        [--copies 1] [--seed 0] [--device auto]

The baseline is ``kface.build.korean.train_korean`` (the shipped recipe, split and seed). The augmented
run trains the same recipe on a manifest of the same images plus ``--copies`` copies of each image of
the training groups that are not the baseline's val groups (so val, which picks the epoch and the run's
threshold, is the same images), each copy made by :func:`kface.datasets.degradations.old_photo` (grey or
sepia, downscaled to 64-96 px and back, blurred, JPEG quality 20-40; seeded per image) and filed under the
same person, family, age and gender. Copies are written under ``--work`` (a root holding a link to the
set's images and the copies), never into the repository. Both runs are scored with the family protocol
on the held-out groups (``kface benchmark families --groups kface/models/korean-heldout-families.txt``):
accuracy at each run's own threshold and at thresholds chosen on the other folds, AUC and EER per pair kind.

A single split (the held-out groups: 707 images of 63 people), so differences under about two points of
accuracy or 0.01 of AUC are noise; the k-fold protocol is the test for a recipe that is to ship.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def write_copies(root: Path, work: Path, copies: int, seed: int, val_groups: set[str]) -> Path:
    """A root under ``work`` with the set's images (a link) and degraded copies of the training images of
    groups not in ``val_groups``; returns its manifest (originals, then copies)."""
    from PIL import Image

    from kface.datasets.degradations import old_photo
    from kface.evaluation.family_scoring import write_manifest
    from kface.evaluation.heldout import korean_split
    from kface.faces.images import load_image

    training, _ = korean_split(root)
    aug_root = work / "root"
    (aug_root / "album").mkdir(parents=True, exist_ok=True)
    images_link = aug_root / "images"
    if not images_link.exists():
        images_link.symlink_to((root / "images").resolve(), target_is_directory=True)
    manifest = aug_root / "manifest.csv"
    write_manifest(training, np.arange(len(training)), manifest)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    added = []
    for number, row in enumerate(rows):
        if row["family"] in val_groups:
            continue
        for copy in range(copies):
            name = f"album/{Path(row['path']).stem}_c{copy}.png"
            if not (aug_root / name).is_file():
                rng = np.random.default_rng([seed, number, copy])
                Image.fromarray(old_photo(load_image(str(root / row["path"])), rng)).save(aug_root / name)
            added.append({**row, "path": name})
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows + added)
    print(f"{len(added)} degraded copies of {len(rows)} training images ({len(val_groups)} val groups left "
          f"without) in {aug_root}", flush=True)
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the korean_family folder")
    parser.add_argument("--work", type=Path, required=True, help="a folder outside the repository for runs and copies")
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from heldout_screen import score_heldout

    from kface.build.korean import train_korean, train_recipe_on, val_groups_index

    baseline_run, album_run = args.work / "runs" / "baseline", args.work / "runs" / "album"
    baseline = baseline_run / "model.pt"
    if not baseline.is_file():
        train_korean(args.root, baseline_run, args.device, progress=False)
    val_groups = set(val_groups_index(args.root, baseline_run).attributes["family"])
    manifest = write_copies(args.root, args.work, args.copies, args.seed, val_groups)
    album = album_run / "model.pt"
    if not album.is_file():
        train_recipe_on(manifest.parent, manifest, album_run, args.device, progress=False)
    score_heldout(args.root, [str(baseline), str(album)], ["baseline", "album copies"], args.work / "heldout",
                  args.device, f"the shipped recipe without and with {args.copies} old-album copies of each "
                               f"training image (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
