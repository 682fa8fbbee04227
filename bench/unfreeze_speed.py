"""Speed of training the backbone's last layers (``kface train --unfreeze``) on this machine.

For each cut point of ``dlib-torch``: the one-time build of the prefix cache (the frozen layers run on
every image and its mirror image, stored as float16), its size, and the time of one training epoch
with the metric loss (32 identities x 4 images per batch, an epoch = every training image about once)
and with the pair loss (BCE, batch 32, every train pair once), each against the frozen head's BCE
epoch (``--unfreeze none``, the paper's recipe) measured in the same run. Validation passes are timed
apart (they run once per epoch over the val pairs).

Data: LFW people with at least 4 images (at most ``--max-images`` each), cropped to the face like a
pre-cropped dataset (kface.datasets.degradations.tight_crop) so that no detector runs and the figures are the
network's alone; pairs at 1:1, split 0.8:0.1:0.1 by identity. Everything goes to a cache folder of the
bench's own (``<work>/cache``), never the user's.

    python bench/unfreeze_speed.py [--people N] [--max-images K] [--epochs E] [--device cpu|cuda] [--cuts ...]

On a GPU, ``--cuts`` may include ``all`` (the whole network trains from the chips, with AMP; no cache).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LFW_IMAGES = (REPO / ".." / "shared" / "data" / "lfw" / "images").resolve()
COMMON = {"backbone": "dlib-torch", "detector": "none", "workers": 0, "select": "accuracy", "seed": 0}


def build_tree(lfw_images: Path, tree: Path, people: int, max_images: int) -> int:
    """Tight face crops of LFW (PNG, lossless) under ``tree``; reused when already there. Returns the image count."""
    from PIL import Image

    from kface.datasets.degradations import tight_crop
    from kface.faces.images import load_image

    count = 0
    chosen = [p for p in sorted(lfw_images.iterdir()) if p.is_dir() and len(os.listdir(p)) >= 4][:people]
    for person in chosen:
        (tree / person.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(person.iterdir())[:max_images]:
            target = tree / person.name / f"{image.stem}.png"
            if not target.is_file():
                Image.fromarray(tight_crop(load_image(image))).save(target)
            count += 1
    return count


def make_pairs(tree: Path, out: Path, pairs: int) -> Path:
    from kface.datasets import load_dataset
    from kface.pairs import PairRequest, parse_ratio, sample_pairs, write_pairs

    write_pairs(sample_pairs(load_dataset("folder", tree), PairRequest(parse_ratio("1:1"), pairs, (0.8, 0.1, 0.1))),
                out)
    return out


def image_paths(pair_file: Path) -> list[str]:
    from kface.pairs import read_pairs
    from kface.training.identity import train_identity_images

    pairs = read_pairs(pair_file)
    used = {p for name in ("train",
                           "val") for split in [pairs.select(name)] for p in split.abs_path_a + split.abs_path_b}
    return sorted(used | set(train_identity_images(pairs).paths))


def time_cache_build(cut: str, paths: list[str], device: str) -> dict:
    """Build the prefix cache of ``cut`` from scratch (faces come from the face cache, filled before)."""
    from kface.training.store import FeatureSpec, FeatureStore

    store = FeatureStore(FeatureSpec("dlib-torch", cut, detector="none"), device=device)
    if cut != "all":
        shutil.rmtree(store.folder, ignore_errors=True)
    started = time.perf_counter()
    found = store.features(paths)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    store.features(paths)
    reread = time.perf_counter() - started
    size = sum(f.stat().st_size for f in store.folder.glob("*")) if store.folder.is_dir() else 0
    return {"build_s": seconds, "reread_s": reread, "images": int(found.ok.sum()), "bytes": size,
            "row_shape": list(found.features.shape[1:])}


def time_training(pair_file: Path, out: Path, epochs: int, device: str, **settings) -> dict:
    from kface.training.run import TrainConfig, train

    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig.from_dict({"pairs": str(pair_file), "out": str(out), "epochs": epochs, "patience": None,
                                    "device": device, **COMMON, **settings})
    result = train(config)
    timing = result.timing
    return {"epoch_s": timing["train_s"] / epochs, "val_s": timing["validation_s"] / (epochs + 1),
            "best_val_accuracy": result.best["value"], "epochs": epochs}


def trainable_parameters(cut: str) -> int:
    from kface.backbones.trainable import build_suffix, empty_network

    suffix = build_suffix(empty_network("dlib-torch"), cut)
    return 0 if suffix is None else sum(p.numel() for p in suffix.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw-images", type=Path, default=LFW_IMAGES)
    parser.add_argument("--work", type=Path, default=None, help="default: <kface cache>/bench/unfreeze-speed")
    parser.add_argument("--people", type=int, default=300, help="LFW people with at least 4 images")
    parser.add_argument("--max-images", type=int, default=10, help="at most this many images per person")
    parser.add_argument("--pairs", type=int, default=3000, help="pairs over all splits")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per setting")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuts", default="fc,last-block,last-stage")
    args = parser.parse_args()
    from kface.util.cache import cache_dir

    work = args.work or cache_dir() / "bench" / "unfreeze-speed"
    os.environ["KFACE_CACHE_DIR"] = str(work / "cache")  # the bench's own cache: it deletes stores to time them
    import torch

    from kface.training.store import FeatureSpec, FeatureStore

    images = build_tree(args.lfw_images, work / "tree", args.people, args.max_images)
    pair_file = make_pairs(work / "tree", work / "pairs.csv", args.pairs)
    paths = image_paths(pair_file)
    started = time.perf_counter()
    FeatureStore(FeatureSpec("dlib-torch", "none", detector="none"), device=args.device).features(paths)
    faces_seconds = time.perf_counter() - started
    frozen = time_training(pair_file, work / "runs" / "frozen", args.epochs, args.device)
    rows = []
    for cut in [c.strip() for c in args.cuts.split(",") if c.strip()]:
        cache = time_cache_build(cut, paths, args.device)
        metric = time_training(pair_file, work / "runs" / f"{cut}-metric", args.epochs, args.device, unfreeze=cut,
                               loss="metric")
        bce = time_training(pair_file, work / "runs" / f"{cut}-bce", args.epochs, args.device, unfreeze=cut)
        rows.append({"cut": cut, "parameters": trainable_parameters(cut), **cache, "metric": metric, "bce": bce})
        print(f"  {cut}: cache {cache['build_s']:.1f} s, metric epoch {metric['epoch_s']:.2f} s, "
              f"bce epoch {bce['epoch_s']:.2f} s", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    lines = [f"{images} LFW face crops of {args.people} people, {len(paths)} used; {args.pairs} pairs; "
             f"{args.epochs} epochs per setting; {device}, torch {torch.__version__}, {torch.get_num_threads()} "
             f"threads. "
             f"Face chips and frozen embeddings first: {faces_seconds:.1f} s (shared by every cut). "
             f"Frozen head (--unfreeze none, BCE): {frozen['epoch_s']:.3f} s per epoch, val pass "
             f"{frozen['val_s']:.3f} s.",
             "",
             "| --unfreeze | trainable parameters | cache build (both views) | cache size | metric epoch | "
             "bce epoch | val pass | metric epoch / frozen head epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        per_image = 1000 * row["build_s"] / max(1, row["images"])
        lines.append(f"| {row['cut']} | {row['parameters']:,} | {row['build_s']:.1f} s ({per_image:.1f} ms/image) | "
                     f"{row['bytes'] / 2**20:.0f} MiB | {row['metric']['epoch_s']:.2f} s | "
                     f"{row['bce']['epoch_s']:.2f} s | "
                     f"{row['metric']['val_s']:.2f} s | {row['metric']['epoch_s'] / frozen['epoch_s']:.0f}x |")
    lines += ["", "```", "python bench/unfreeze_speed.py " + shlex.join(sys.argv[1:]), "```"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
