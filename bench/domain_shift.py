"""Domain-shift benchmark: the base backbone and each head on "old album photo" LFW, no Korean data needed.

1. Builds a seeded degraded copy of LFW: for every LFW person with at least ``--min-images`` images
   (at most ``--max-images`` each, ``--identities`` of them), ``--degradation`` (one of
   kface.datasets.degradations.DEGRADATIONS; default ``old-album``: a tight 128 px crop around the face, grey or
   sepia, downscaled to 64-96 px and back, blurred, JPEG quality 20-40), stored losslessly (PNG) as
   ``<work>/album-lfw/<person>/<image>.png``. Each image's degradation is drawn from (seed, its path),
   so a subset or a rerun gives the same pixels.
2. Samples identity-disjoint train/val/test pairs from that tree (kface.pairs, ``--ratio`` 4:6 as in
   the paper, ``--split`` by identity).
3. Reports the base backbone and trains each row of :data:`ROWS` (kface.training.run), then scores every one
   with kface.evaluation.report.overlap_report: threshold chosen on val by the study's ``intersection`` rule,
   accuracy, ROC AUC, EER and overlap area measured on every test pair. Faces come from the ``auto``
   detector (HOG, MTCNN, padded HOG), with the whole crop as the face where all three miss.

Prints a Markdown table (also ``<out>/domain_shift.md``, every figure in ``<out>/domain_shift.json``)
and says whether every trained head beats the base backbone on the test pairs.

    python bench/domain_shift.py [--degradation NAME] [--identities N] [--max-images K] [--pairs P]
                                 [--epochs E] [--seed S] [--rows KEYS]
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LFW_IMAGES = (REPO / ".." / "shared" / "data" / "lfw" / "images").resolve()
DETECTOR, FALLBACK = "auto", "whole-image"

#: The untrained rows: (key for --rows, name in the table, distance, test-time augmentation).
BASE_ROWS = [("base", "base backbone, euclidean", "euclidean", "none"),
             ("base-cosine", "base backbone, cosine", "cosine", "none"),
             ("base-flip", "base backbone, euclidean, flip", "euclidean", "flip")]
#: The trained rows, after those: (key for --rows, name in the table, kface.training.run.TrainConfig settings).
#: To compare another recipe, add a row here.
ROWS: list[tuple[str, str, dict]] = [
    ("siamese", "siamese, euclidean (the paper's)", {"head": "siamese", "distance": "euclidean"}),
    ("siamese-cosine", "siamese, cosine", {"head": "siamese", "distance": "cosine"}),
    # The paper's lr (0.01 -> 0.001) moves the identity-initialised head far in its first epoch; a slower one:
    ("siamese-slow", "siamese, euclidean, lr 1e-4 -> 1e-5", {"head": "siamese", "distance": "euclidean",
                                                             "lr": 1e-4, "min_lr": 1e-5}),
    ("lda", "lda, euclidean", {"head": "lda", "distance": "euclidean"}),
    ("lda-cosine", "lda, cosine", {"head": "lda", "distance": "cosine"}),
    ("lda+siamese", "lda+siamese, euclidean", {"head": "lda+siamese", "distance": "euclidean"}),
    ("lda+siamese-cosine", "lda+siamese, cosine", {"head": "lda+siamese", "distance": "cosine"}),
    ("siamese-flip", "siamese, euclidean, flip", {"head": "siamese", "distance": "euclidean", "tta": "flip"}),
    ("lda-cosine-flip", "lda, cosine, flip", {"head": "lda", "distance": "cosine", "tta": "flip"}),
    # dlib-torch's last layers trained too (kface train --unfreeze), with the unfrozen defaults
    # (epochs None: 20 with early stopping, lr 1e-5, mirror augmentation, no head).
    *[(f"unfreeze-{cut}-{loss}", f"dlib-torch {cut} + fc tuned, {loss} loss",
       {"backbone": "dlib-torch", "unfreeze": cut, "loss": loss, "epochs": None})
      for cut in ("last-block", "last-stage") for loss in ("metric", "bce")],
    ("unfreeze-last-block-metric-flip", "dlib-torch last-block + fc tuned, metric loss, flip",
     {"backbone": "dlib-torch", "unfreeze": "last-block", "loss": "metric", "epochs": None, "tta": "flip"}),
]


# -- 1. the degraded tree ----------------------------------------------------------------------------
def build_album_lfw(lfw_images: Path, out: Path, *, min_images: int, max_images: int, identities: int,
                    seed: int, degradation: str = "old-album") -> dict:
    """Write the degraded tree into ``out`` (reused when a complete one with the same settings is there)."""
    from PIL import Image

    from kface.datasets.degradations import DEGRADATIONS
    from kface.faces.images import load_image
    from kface.util.outputs import atomic_path, write_json

    settings = {"source": str(lfw_images), "min_images": min_images, "max_images": max_images,
                "identities": identities, "seed": seed,
                "degradation": f"kface.datasets.degradations.DEGRADATIONS[{degradation!r}]",
                "format": "png"}
    done = out / "build.json"
    if done.is_file():
        recorded = json.loads(done.read_text(encoding="utf-8"))
        if recorded.get("settings") == settings and recorded.get("complete"):
            return recorded
        shutil.rmtree(out)  # our own tree, unfinished or with other settings: its images must not linger
    elif out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} holds files this script did not write; choose another --work")
    degrade = DEGRADATIONS[degradation]
    write_json(done, {"settings": settings, "complete": False})
    rng = np.random.default_rng(seed)
    people = sorted(folder for folder in lfw_images.iterdir()
                    if folder.is_dir() and sum(1 for _ in folder.glob("*.jpg")) >= min_images)
    if identities and identities < len(people):
        people = [people[i] for i in sorted(rng.choice(len(people), identities, replace=False))]
    images = 0
    for person in people:
        files = sorted(person.glob("*.jpg"))
        if max_images and len(files) > max_images:
            files = [files[i] for i in sorted(rng.choice(len(files), max_images, replace=False))]
        for file in files:
            relative = f"{person.name}/{file.stem}"
            # One stream per image, from the seed and its path: independent of which others are built.
            image_rng = np.random.default_rng([seed, zlib.crc32(relative.encode())])
            target = out / f"{relative}.png"
            with atomic_path(target, suffix=".png") as temp:
                Image.fromarray(degrade(load_image(file), image_rng)).save(temp, format="PNG")
            images += 1
    record = {"settings": settings, "complete": True, "identities": len(people), "images": images}
    write_json(done, record)
    return record


# -- 2. pairs ----------------------------------------------------------------------------------------
def make_pairs(tree: Path, out: Path, *, ratio: str, pairs: int, split: str, seed: int) -> Path:
    from kface.datasets import load_dataset
    from kface.pairs import PairRequest, parse_ratio, parse_split, sample_pairs, write_pairs

    index = load_dataset("folder", tree)
    request = PairRequest(parse_ratio(ratio), pairs, parse_split(split), None, seed)
    pair_file = out / "pairs" / "album-lfw.csv"
    write_pairs(sample_pairs(index, request), pair_file)
    return pair_file


# -- 3. rows -----------------------------------------------------------------------------------------
def base_row(key: str, name: str, distance: str, tta: str, pair_file: Path, out: Path, seed: int) -> dict:
    from kface.api import Verifier
    from kface.embeddings.embedder import Embedder
    from kface.evaluation.report import overlap_report

    started = time.perf_counter()
    embedder = Embedder("dlib-resnet", detector=DETECTOR, fallback=FALLBACK, tta=tta)
    # No threshold of its own: the report chooses one on val, like for every other row.
    verifier = Verifier(embedder, math.nan, "chosen on val", distance=distance)
    body = overlap_report(pair_file, verifier, samples="all", seed=seed, out_dir=out / "reports" / key)
    return _row(key, name, {"head": "none", "distance": distance, "tta": tta, "unfreeze": "none", "trained": False},
                body, None, time.perf_counter() - started)


def trained_row(key: str, name: str, settings: dict, pair_file: Path, out: Path, seed: int, epochs: int) -> dict:
    from kface.evaluation.report import overlap_report, report_verifier
    from kface.training.run import TrainConfig, train

    run = out / "runs" / key
    config = TrainConfig.from_dict({"pairs": str(pair_file), "out": str(run), "epochs": epochs, "seed": seed,
                                    "detector": DETECTOR, "fallback": FALLBACK, "device": "cpu", **settings})
    if run.is_dir():  # a run of an earlier invocation, perhaps with other settings: train afresh
        shutil.rmtree(run)
    started = time.perf_counter()
    result = train(config)
    fit_seconds = time.perf_counter() - started
    verifier = report_verifier(str(result.model_path), detector=DETECTOR, fallback=FALLBACK, device="cpu")
    body = overlap_report(pair_file, verifier, samples="all", seed=seed, out_dir=out / "reports" / key)
    return _row(key, name, {"head": config.head, "distance": config.distance, "tta": config.tta,
                            "unfreeze": config.unfreeze, "trained": True, "epochs": result.history[-1]["epoch"],
                            "best_epoch": result.best.get("epoch")}, body, result.timing, fit_seconds)


def _row(key: str, name: str, settings: dict, body: dict, timing, seconds: float) -> dict:
    return {"key": key, "row": name, **settings, **{key: body[key] for key in ("accuracy", "auc", "eer", "overlap",
                                                                               "threshold",
                                                                     "n_same", "n_diff")},
            "detection_stages": body["detection_stages"], "timing": timing, "seconds": seconds}


# -- the table ---------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    best_accuracy = max(row["accuracy"] for row in rows)
    lines = ["| model | accuracy | ROC AUC | EER | overlap (KDE) | threshold | model.pt epoch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        accuracy = f"{100 * row['accuracy']:.2f}%"
        if row["accuracy"] == best_accuracy:
            accuracy = f"**{accuracy}**"
        # The epoch that val chose (0: the head as initialised, or as fitted for lda).
        epoch = "—" if row.get("best_epoch") is None else f"{row['best_epoch']} of {row['epochs']}"
        lines.append(f"| {row['row']} | {accuracy} | {row['auc']:.4f} | {100 * row['eer']:.2f}% | "
                     f"{row['overlap']:.4f} | {row['threshold']:.4f} | {epoch} |")
    return "\n".join(lines)


def main() -> None:
    from kface.datasets.degradations import DEGRADATIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw-images", type=Path, default=LFW_IMAGES)
    parser.add_argument("--degradation", default="old-album", choices=sorted(DEGRADATIONS),
                        help="how LFW is degraded (kface.datasets.degradations.DEGRADATIONS)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the degraded tree, pairs, runs and reports go "
                             "(default: <kface cache>/bench/domain-shift/<degradation>)")
    parser.add_argument("--min-images", type=int, default=4, help="LFW people with at least this many images")
    parser.add_argument("--max-images", type=int, default=10, help="at most this many images per person (0: all)")
    parser.add_argument("--identities", type=int, default=0,
                        help="this many of those people, drawn with the seed (0: all)")
    parser.add_argument("--pairs", type=int, default=6000, help="pairs over all splits")
    parser.add_argument("--ratio", default="4:6")
    parser.add_argument("--split", default="0.6:0.2:0.2")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    keys = [row[0] for row in BASE_ROWS + ROWS]
    parser.add_argument("--rows", default="", help=f"comma-separated rows to run, of: {','.join(keys)} (default: all)")
    args = parser.parse_args()
    from kface.util.cache import cache_dir
    from kface.util.outputs import write_json, write_text

    work = args.work or cache_dir() / "bench" / "domain-shift" / args.degradation
    command = "python bench/domain_shift.py " + shlex.join(sys.argv[1:])
    started = time.perf_counter()
    built = build_album_lfw(args.lfw_images, work / "album-lfw", min_images=args.min_images,
                            max_images=args.max_images, identities=args.identities, seed=args.seed,
                            degradation=args.degradation)
    build_seconds = time.perf_counter() - started
    pair_file = make_pairs(work / "album-lfw", work, ratio=args.ratio, pairs=args.pairs, split=args.split,
                           seed=args.seed)
    chosen = {key.strip() for key in args.rows.split(",") if key.strip()}
    if chosen - set(keys):
        parser.error(f"--rows: unknown {', '.join(sorted(chosen - set(keys)))}; choose from {', '.join(keys)}")
    rows = []
    for key, name, distance, tta in BASE_ROWS:
        if not chosen or key in chosen:
            rows.append(base_row(key, name, distance, tta, pair_file, work, args.seed))
            print(f"  {name}: accuracy {100 * rows[-1]['accuracy']:.2f}% ({rows[-1]['seconds']:.0f} s)", flush=True)
    for key, name, settings in ROWS:
        if not chosen or key in chosen:
            rows.append(trained_row(key, name, settings, pair_file, work, args.seed, args.epochs))
            print(f"  {name}: accuracy {100 * rows[-1]['accuracy']:.2f}% ({rows[-1]['seconds']:.0f} s)", flush=True)
    manifest = json.loads(pair_file.with_suffix(".json").read_text(encoding="utf-8"))
    stages = rows[0]["detection_stages"] if rows else {}
    summary = (f"Degraded LFW ({args.degradation}): {built['images']} images of {built['identities']} people (>= "
               f"{args.min_images} "
               f"images each, at most {args.max_images or 'all'}), seed {args.seed}; {args.pairs} pairs at "
               f"{args.ratio} (different:same), split {args.split} by identity; {args.epochs} epochs per trained "
               f"head (rows that tune backbone layers: kface's --unfreeze defaults, at most 20 epochs with early "
               f"stopping on val); threshold by the intersection rule on val, every figure on the test split "
               f"({rows[0]['n_same'] if rows else 0} same / {rows[0]['n_diff'] if rows else 0} different pairs). "
               f"Detector {DETECTOR} over the scored images: "
               + ", ".join(f"{stage} {count}" for stage, count in sorted(stages.items())) + ".")
    text = table(rows) if rows else "(no rows)"
    base = next((row for row in rows if row["key"] == "base"), None)
    verdict = ""
    trained = [row for row in rows if row["trained"]]
    if base is not None and trained:
        # Each against the base backbone with the same distance and test-time augmentation, where it ran.
        bases = {(row["distance"], row["tta"]): row for row in rows if not row["trained"]}
        losers = [row["row"] for row in trained
                  if not row["accuracy"] > bases.get((row["distance"], row["tta"]), base)["accuracy"]]
        verdict = ("Every trained head beats the base backbone's test accuracy (with the same distance and "
                   "test-time augmentation): " + ("yes" if not losers else f"no ({'; '.join(losers)})") + ".")
    frozen = [row for row in rows if row["trained"] and row["unfreeze"] == "none"]
    tuned = [row for row in rows if row["unfreeze"] != "none"]
    if frozen and tuned:
        best_tuned = max(tuned, key=lambda row: row["accuracy"])
        best_frozen = max(frozen, key=lambda row: row["accuracy"])
        verdict += (f" The best row that tunes backbone layers ({best_tuned['row']}, "
                    f"{100 * best_tuned['accuracy']:.2f}%) beats every frozen head (best: {best_frozen['row']}, "
                    f"{100 * best_frozen['accuracy']:.2f}%): "
                    + ("yes" if best_tuned["accuracy"] > best_frozen["accuracy"] else "no") + ".")
    total = time.perf_counter() - started
    report = "\n\n".join([summary, text, verdict,
                          f"Wall time {total / 60:.1f} min on this machine (building the tree {build_seconds:.0f} s).",
                          f"```\n{command}\n```"]) + "\n"
    print(report)
    write_text(work / "domain_shift.md", report)
    write_json(work / "domain_shift.json", {"command": command, "settings": vars(args) | {"work": str(work)},
                                            "tree": built, "pairs": {"file": str(pair_file),
                                                                     "counts": manifest.get("counts")},
                                            "rows": rows, "seconds": total})


if __name__ == "__main__":
    main()
