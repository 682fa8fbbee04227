"""Per-stage face-finding counts of the `auto` detector over all of LFW and its degraded variants.

Stages: hog, hog-padded (HOG on the padded image), mtcnn, none. Variants: the deep-funneled images as
they are, tight 128 px face crops, and seeded "old album" crops (grey/sepia, low resolution, blur,
JPEG 20-40). Usage: .venv/bin/python bench/detector_cascade.py [--lfw-dir DIR] [--every N] [--seed S]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np

from kface.datasets.degradations import old_album_crop, tight_crop
from kface.errors import NoFaceError
from kface.faces.detect import FaceFinder, FaceSettings
from kface.faces.images import load_image

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw-dir", default=str(REPO / ".." / "shared" / "data" / "lfw"))
    parser.add_argument("--every", type=int, default=1, help="Use every Nth image (1 = all 13,233).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = sorted((Path(args.lfw_dir) / "images").glob("*/*.jpg"))[::args.every]
    finder = FaceFinder(FaceSettings(detector="auto"), device="cpu")
    rng = np.random.default_rng(args.seed)
    variants = {"lfw": lambda image: image, "tight-128": tight_crop,
                "old-album-128": lambda image: old_album_crop(image, rng)}
    for name, transform in variants.items():
        stages: Counter = Counter()
        start = time.perf_counter()
        for path in paths:
            try:
                stages[finder.find(transform(load_image(path))).stage] += 1
            except NoFaceError:
                stages["none"] += 1
        found = 1 - stages["none"] / len(paths)
        counts = ", ".join(f"{stage} {stages[stage]}" for stage in ("hog", "hog-padded", "mtcnn", "none"))
        print(f"{name:14s} {len(paths)} images: found {100 * found:.2f}% ({counts}); "
              f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
