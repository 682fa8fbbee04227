"""Training speed: feature extraction (the frozen backbone, once per image) and head training, timed apart.

1. Feature extraction: real LFW images through the feature store (HOG detection, alignment, dlib's
   ResNet), in a fresh cache, then again (every image already stored). Reports images per second.
2. Head training: the default recipe (siamese head, BCE, batch 32, Adam 0.01 -> 0.001 cosine) for 200
   epochs on 10,000 train pairs and 1,250 val pairs of synthetic 128-d features shaped like dlib's
   (identity centres plus per-image noise: same-person distances ~0.4, different ~0.85). Reports the
   optimiser steps and the per-epoch validation (loss, accuracy at the val threshold, KDE overlap)
   separately. Target: head training <= 60 s on the CPU.

Two baselines in the same run: (a) a minimal hand-written PyTorch loop of the same math (no
modules, no metrics, no checkpoints) timed for a few epochs, the per-step floor on this machine, and
(b) the naive loop that runs the frozen backbone in every epoch, estimated as (extraction time per
image x images x epochs) + head training.

    python bench/train_speed.py [--pairs 10000] [--epochs 200] [--images 160] [--workers N] [--device cpu]

With a GPU, ``--device cuda`` runs both parts there (AMP on).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LFW_IMAGES = (Path(__file__).parents[1] / ".." / "shared" / "data" / "lfw" / "images").resolve()


def synthetic_data(train_pairs: int, val_pairs: int, seed: int = 0):
    """TrainingData over synthetic dlib-like embeddings; train and val identities disjoint; 40% negatives."""
    from kface.training.data import SplitPairs, TrainingData

    rng = np.random.default_rng(seed)
    identities, per_identity, dim = 2000, 5, 128
    centres = rng.normal(0, 0.047, (identities, dim))
    features = (np.repeat(centres, per_identity, axis=0)
                + rng.normal(0, 0.025, (identities * per_identity, dim))).astype(np.float32)

    def split(count: int, first: int, last: int) -> SplitPairs:
        negatives = round(0.4 * count)
        who = rng.integers(first, last, count)
        a = who * per_identity + rng.integers(0, per_identity, count)
        offset = rng.integers(1, per_identity, count)  # another image of the same person
        b = who * per_identity + (a % per_identity + offset) % per_identity
        other = first + (who - first + rng.integers(1, last - first, count)) % (last - first)
        b[:negatives] = other[:negatives] * per_identity + rng.integers(0, per_identity, negatives)
        labels = np.r_[np.zeros(negatives, np.int8), np.ones(count - negatives, np.int8)]
        return SplitPairs(a.astype(np.int64), b.astype(np.int64), labels)

    return TrainingData(features, split(train_pairs, 0, 1600), split(val_pairs, 1600, 2000), dim,
                        {"pairs_sha256": "synthetic", "source": "synthetic"})


def time_extraction(count: int, workers: int, device: str) -> dict:
    from kface.training.store import FeatureSpec, FeatureStore

    people = [p for p in sorted(LFW_IMAGES.iterdir()) if p.is_dir()]
    paths = [str(image) for person in people for image in sorted(person.glob("*.jpg"))][:count]
    store = FeatureStore(FeatureSpec("dlib-resnet"), device=device, workers=workers)
    started = time.perf_counter()
    first = store.features(paths)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    store.features(paths)
    warm = time.perf_counter() - started
    return {"images": len(paths), "cold_s": cold, "warm_s": warm, "failed": len(first.errors),
            "stages": first.stage_counts()}


def time_training(train_pairs: int, val_pairs: int, epochs: int, device: str, out: Path) -> dict:
    from kface.training.run import TrainConfig, fit

    data = synthetic_data(train_pairs, val_pairs)
    config = TrainConfig(pairs="synthetic", out=str(out), epochs=epochs, device=device)
    started = time.perf_counter()
    result = fit(config, data)
    total = time.perf_counter() - started
    first, last = result.history[0], result.history[-1]
    return {"total_s": total, **result.timing, "val_loss_start": first["val_loss"], "val_loss_end": last["val_loss"],
            "val_overlap_end": last["val_overlap"], "val_accuracy_end": last["val_accuracy"]}


def minimal_step_seconds(train_pairs: int, epochs: int = 3) -> float:
    """Seconds per step of the same training math written as plainly as PyTorch allows."""
    import torch
    import torch.nn.functional as F

    data = synthetic_data(train_pairs, 10)
    features = torch.from_numpy(data.features)
    a, b = torch.from_numpy(data.train.a), torch.from_numpy(data.train.b)
    labels = torch.from_numpy(data.train.labels.astype(np.float32))
    weight, bias = torch.eye(128, requires_grad=True), torch.zeros(128, requires_grad=True)
    offset, log_sharpness = torch.tensor(0.6, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    parameters = [weight, bias, offset, log_sharpness]
    optimizer = torch.optim.Adam(parameters, lr=0.01, fused=True)
    steps, started = 0, time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))
        xa, xb, y = features.index_select(0, a[order]), features.index_select(0, b[order]), labels[order]
        for start in range(0, len(order), 32):
            n = len(y[start:start + 32])
            e = torch.tanh(F.linear(torch.cat([xa[start:start + 32], xb[start:start + 32]]), weight, bias))
            d = torch.linalg.vector_norm(e[:n] - e[n:], dim=-1)
            loss = F.binary_cross_entropy_with_logits(log_sharpness.exp() * (offset - d), y[start:start + 32])
            for p in parameters:
                p.grad = None
            loss.backward()
            optimizer.step()
            steps += 1
    torch.set_num_threads(threads)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000, help="train pairs (default 10,000)")
    parser.add_argument("--val-pairs", type=int, default=1_250, help="val pairs (default 1,250)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--images", type=int, default=160, help="LFW images for the extraction timing")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not LFW_IMAGES.is_dir():
        sys.exit(f"{LFW_IMAGES} is missing: the LFW images live in ../shared beside the checkout")

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["KFACE_CACHE_DIR"] = str(Path(scratch) / "cache")  # a fresh cache: nothing precomputed
        import torch

        print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, device {args.device}")
        extraction = time_extraction(args.images, args.workers, args.device)
        per_image = extraction["cold_s"] / extraction["images"]
        print(f"feature extraction: {extraction['images']} LFW images in {extraction['cold_s']:.1f} s "
              f"({1 / per_image:.1f} images/s, {args.workers} detection workers; stages {extraction['stages']}); "
              f"again from the store: {extraction['warm_s']:.2f} s")
        before = minimal_step_seconds(args.pairs) if args.device == "cpu" else None
        head = time_training(args.pairs, args.val_pairs, args.epochs, args.device, Path(scratch) / "run")
        # Timed before and after, averaged: the machine's load drifts during a minute-long run.
        minimal = (before + minimal_step_seconds(args.pairs)) / 2 if before is not None else None
        steps = args.epochs * -(-args.pairs // 32)
        print(f"head training: {args.epochs} epochs x {args.pairs} pairs ({steps} steps) in {head['total_s']:.1f} s: "
              f"optimiser {head['train_s']:.1f} s ({1e6 * head['train_s'] / steps:.0f} us/step), "
              f"validation {head['validation_s']:.1f} s ({1e3 * head['validation_s'] / (args.epochs + 1):.0f} ms/epoch "
              f"on {args.val_pairs} pairs); target <= 60 s: {'met' if head['total_s'] <= 60 else 'NOT met'}")
        if minimal is not None:
            ours = head["train_s"] / steps
            print(f"  minimal PyTorch loop of the same math (the floor here): {1e6 * minimal:.0f} us/step "
                  f"({minimal * steps:.1f} s for {steps} steps); kface's step / minimal: {ours / minimal:.2f}")
        print(f"  val loss {head['val_loss_start']:.4f} -> {head['val_loss_end']:.4f}, "
              f"overlap {head['val_overlap_end']:.4f}, accuracy {head['val_accuracy_end']:.4f}")
        images = 2 * args.pairs  # at most: every pair with two images of its own
        naive = per_image * images * args.epochs + head["total_s"]
        once = per_image * images + head["total_s"]
        print(f"backbone every epoch (naive, estimated for up to {images} images): {naive / 3600:.1f} h; "
              f"once per image (the store): {once / 60:.1f} min; ratio {naive / once:.0f}x")


if __name__ == "__main__":
    main()
