"""Faces found, and HOG time, with the sized HOG policy against the fixed one, on the same images.

    .venv/bin/python bench/detection_policy.py [--lfw 2000] [--korean 2000] [--seed 0]

For each set (LFW's deep-funneled images, the Korean family-album 128 px crops, the sample portraits),
a seeded subset runs through FaceFinder with ``--detector dlib`` (HOG, its retries, no MTCNN) under
``policy="fixed"`` (kface before: one pass at upsample 1, then the padded retry) and ``policy="sized"``
(a pass sized to the image first, the fixed passes only on a miss). Printed per set: faces found by
each (and by which stage), images found by one policy only, and seconds per image (detection,
landmarks and chip), as the ratio sized / fixed timed in the same run, the policies alternating image
by image.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kface.errors import NoFaceError  # noqa: E402
from kface.faces.detect import FaceFinder, FaceSettings  # noqa: E402
from kface.faces.images import load_image  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def image_sets(lfw: int, korean: int, seed: int) -> dict[str, list[Path]]:
    sets = {}
    lfw_images = sorted((DATA / "lfw" / "images").glob("*/*.jpg"))
    if lfw_images:
        sets["lfw"] = random.Random(seed).sample(lfw_images, min(lfw, len(lfw_images)))
    crops = sorted((DATA / "korean_family" / "images").glob("*.jpg"))
    if crops:
        sets["korean crops"] = random.Random(seed).sample(crops, min(korean, len(crops)))
    samples = sorted(p for p in (REPO / "examples").glob("*") if p.suffix.lower() in (".jpg", ".png"))
    if samples:
        sets["sample portraits"] = samples
    return sets


def run(finders: dict[str, FaceFinder], images: list) -> dict[str, tuple[dict[str, str], float]]:
    """Per policy: each image's stage ("none" for a miss) and the seconds taken. Policies alternate
    image by image (and which goes first), so a machine shared with other work slows both alike."""
    stages = {policy: {} for policy in finders}
    seconds = {policy: 0.0 for policy in finders}
    for index, (name, image) in enumerate(images):
        order = list(finders) if index % 2 == 0 else list(finders)[::-1]
        for policy in order:
            start = time.perf_counter()
            try:
                stages[policy][name] = finders[policy].find(image, name).stage
            except NoFaceError:
                stages[policy][name] = "none"
            seconds[policy] += time.perf_counter() - start
    return {policy: (stages[policy], seconds[policy]) for policy in finders}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=int, default=2000, help="LFW images (seeded sample)")
    parser.add_argument("--korean", type=int, default=2000, help="Korean crops (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sets = image_sets(args.lfw, args.korean, args.seed)
    if not sets:
        print(f"no images: {DATA} is absent", file=sys.stderr)
        return 1
    finders = {policy: FaceFinder(FaceSettings(detector="dlib", policy=policy), device="cpu")
               for policy in ("fixed", "sized")}
    warm = load_image(next(iter(sets.values()))[0])
    run(finders, [("warm", warm)])  # load dlib's models outside the timing
    print(f"seed {args.seed}; detector dlib (HOG + padded retry), no MTCNN")
    print("| images | n | found, fixed | found, sized | only fixed | only sized | s/image fixed | s/image sized | "
          "sized / fixed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, paths in sets.items():
        images = [(str(path), load_image(path)) for path in paths]
        results = run(finders, images)
        found = {policy: {n for n, stage in stages.items() if stage != "none"} for policy, (stages,
                                                                                            _) in results.items()}
        detail = {policy: ", ".join(f"{stage} {sum(1 for s in stages.values() if s == stage)}"
                                    for stage in ("hog", "hog-padded")) for policy, (stages, _) in results.items()}
        per_image = {policy: seconds / len(images) for policy, (_, seconds) in results.items()}
        print(f"| {label} | {len(images)} | {len(found['fixed'])} ({detail['fixed']}) | "
              f"{len(found['sized'])} ({detail['sized']}) | {len(found['fixed'] - found['sized'])} | "
              f"{len(found['sized'] - found['fixed'])} | {per_image['fixed']:.4f} | {per_image['sized']:.4f} | "
              f"{per_image['sized'] / per_image['fixed']:.2f} |")
        for name in sorted(found["fixed"] ^ found["sized"])[:5]:
            print(f"    found by one policy only: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
