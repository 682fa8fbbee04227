"""Pair sampler and K-Face indexer speed, against naive baselines run alongside.

Targets: 1,000,000 pairs from a synthetic 1,000-identity x 30-image index (paths only, no images) in
<= 5 s and <= 1 GB peak memory; a K-Face-shaped tree of 100,000 (empty) files indexed in <= 10 s.

With 30 images an identity has 435 same-person pairs, so 1,000 identities hold 435,000: 1M pairs are
possible only at ratios with at most 43.5% same-person pairs. The default 6:4 is the hardest such
ratio (92% of every split's same-person pairs are drawn); 9:1 stresses the different-person side.

Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) is its own.

    python bench/pair_sampler.py [--ratios 6:4,9:1] [--pairs 1000000] [--files 100000]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_index(identities: int, per_identity: int):
    import numpy as np

    from kface.datasets import DatasetIndex, ProblemReport

    names = [f"{19062421 + i}" for i in range(identities)]
    paths = [f"{name}/S001/L1/E01/C{j + 1}.jpg" for name in names for j in range(per_identity)]
    codes = np.repeat(np.arange(identities), per_identity)
    return DatasetIndex("kface", Path("/synthetic"), paths, codes, names, {}, {}, {}, ProblemReport(), {})


def measure_sampler(ratio: str, pairs: int, identities: int, per_identity: int) -> dict:
    from kface.pairs import PairRequest, parse_ratio, sample_pairs, write_pairs

    index = synthetic_index(identities, per_identity)
    before = peak_mib()
    start = time.perf_counter()
    result = sample_pairs(index, PairRequest(parse_ratio(ratio), pairs, seed=0))
    sampled = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_pairs(result, Path(folder) / "bench.csv")
        written = time.perf_counter() - start
        size = (Path(folder) / "bench.csv").stat().st_size
    return {"sample_s": sampled, "write_s": written, "peak_mib": peak_mib(), "index_mib": before,
            "csv_mib": size / 2 ** 20, "counts": result.counts()}


def measure_naive_sampler(ratio: str, pairs: int, identities: int, per_identity: int) -> dict:
    """Baseline: a per-pair Python loop (random identity, random images, a set against repeats).

    It keeps none of the sampler's guarantees (splits, even spread); it only shows the cost of looping.
    """
    negatives_share, positives_share = (int(part) for part in ratio.split(":"))
    negatives = pairs * negatives_share // (negatives_share + positives_share)
    rng = random.Random(0)
    start = time.perf_counter()
    seen: set = set()
    rows = []
    while len(rows) < pairs:
        same = len(rows) >= negatives
        a = rng.randrange(identities)
        b = a if same else rng.randrange(identities - 1)
        b += not same and b >= a  # another identity
        i, j = rng.randrange(per_identity), rng.randrange(per_identity)
        first, second = a * per_identity + i, b * per_identity + j
        key = (min(first, second), max(first, second))
        if first == second or key in seen:
            continue
        seen.add(key)
        rows.append((first, second, int(same)))
    return {"sample_s": time.perf_counter() - start, "peak_mib": peak_mib()}


def build_kface_tree(root: Path, files: int) -> None:
    """Empty files at <root>/<ID>/S00s/Ll/E0e/Cc.jpg, full combinations in order, ``files`` in all."""
    made = 0
    for subject in itertools.count():
        for s, light, e in itertools.product(range(1, 7), range(1, 31), range(1, 4)):
            folder = root / f"{19062421 + subject}" / f"S{s:03d}" / f"L{light}" / f"E{e:02d}"
            folder.mkdir(parents=True)
            for c in range(1, 21):
                (folder / f"C{c}.jpg").touch()
                made += 1
                if made == files:
                    return


def measure_index(files: int) -> dict:
    from kface.datasets import load_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "High_Resolution"
        start = time.perf_counter()
        build_kface_tree(root, files)
        built = time.perf_counter() - start
        start = time.perf_counter()
        listed = sum(len(names) for _, _, names in os.walk(root))
        walk = time.perf_counter() - start
        start = time.perf_counter()
        index = load_dataset("kface", root)
        full = time.perf_counter() - start
        start = time.perf_counter()
        frontal = load_dataset("kface", root, cameras="frontal", lights="L1~7")
        filtered = time.perf_counter() - start
    assert listed == files == len(index)
    return {"build_s": built, "os_walk_s": walk, "index_s": full, "images": len(index),
            "filtered_index_s": filtered, "filtered_images": len(frontal), "peak_mib": peak_mib()}


def run_child(*arguments: str) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON result."""
    repo = Path(__file__).resolve().parents[1]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    output = subprocess.run([sys.executable, __file__, "--child", *arguments], check=True, capture_output=True,
                            text=True, env=environment).stdout
    return json.loads(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", default="6:4,9:1")
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--per-identity", type=int, default=30)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "index":
            result = measure_index(int(rest[0]))
        else:
            measure = measure_sampler if kind == "sampler" else measure_naive_sampler
            result = measure(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps(result))
        return

    shape = (str(args.pairs), str(args.identities), str(args.per_identity))
    print(f"sampler: {args.pairs:,} pairs from {args.identities:,} identities x {args.per_identity} images "
          f"(targets: <= 5 s, <= 1024 MiB)")
    for ratio in args.ratios.split(","):
        ours = run_child("sampler", ratio, *shape)
        naive = run_child("naive", ratio, *shape)
        counts = ", ".join(f"{name} {c['different']:,}/{c['same']:,}" for name, c in ours["counts"].items())
        print(f"  {ratio}: sample {ours['sample_s']:.2f} s, write {ours['write_s']:.2f} s "
              f"(total {ours['sample_s'] + ours['write_s']:.2f} s), peak {ours['peak_mib']:.0f} MiB "
              f"(index alone {ours['index_mib']:.0f} MiB), CSV {ours['csv_mib']:.0f} MiB; different/same: {counts}")
        print(f"        naive per-pair Python loop: {naive['sample_s']:.2f} s, peak {naive['peak_mib']:.0f} MiB "
              f"-> sampler is {naive['sample_s'] / ours['sample_s']:.1f}x faster (and keeps splits and spread)")
    index = run_child("index", str(args.files))
    print(f"K-Face index of {index['images']:,} files (target: <= 10 s): {index['index_s']:.2f} s "
          f"(os.walk alone {index['os_walk_s']:.2f} s, ratio {index['index_s'] / index['os_walk_s']:.1f}x); "
          f"frontal + L1~7 filter: {index['filtered_index_s']:.2f} s for {index['filtered_images']:,} images; "
          f"peak {index['peak_mib']:.0f} MiB; building the tree took {index['build_s']:.1f} s")


if __name__ == "__main__":
    main()
