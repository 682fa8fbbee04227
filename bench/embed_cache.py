"""Cache speed-up of `kface embed` and the cold wall time of `kface verify a b`.

Runs the real command line in subprocesses with a fresh cache folder:
  1. `kface embed` over 50 LFW images, first run (detect + align + embed) vs second run (cache hits);
  2. `kface verify examples/obama.jpg examples/obama2.jpg` with an empty cache (cold: imports, model
     loads, detection, embedding), then again warm.
Usage: .venv/bin/python bench/embed_cache.py [--lfw-dir ../shared/data/lfw]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KFACE = [sys.executable, "-m", "kface"]


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw-dir", default=str(REPO / ".." / "shared" / "data" / "lfw"))
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    images = sorted(str(p) for p in (Path(args.lfw_dir) / "images").glob("*/*_0001.jpg"))[:args.images]
    if len(images) < args.images:
        sys.exit(f"error: found {len(images)} LFW images under {args.lfw_dir}, need {args.images}")
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "KFACE_CACHE_DIR": cache}
        embed = KFACE + ["embed", *images, "--out", f"{out}/e.npz", "--quiet", "--fallback", "whole-image"]
        first = timed(embed, env)
        second = timed(embed, env)
        print(f"kface embed, {len(images)} images: first {first:.2f} s, second {second:.2f} s, "
              f"speed-up {first / second:.1f}x (target >= 10x)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "KFACE_CACHE_DIR": cache}
        verify = KFACE + ["verify", "examples/obama.jpg", "examples/obama2.jpg", "--quiet"]
        cold = timed(verify, env)
        warm = timed(verify, env)
        help_time = timed(KFACE + ["--help"], env)
        print(f"kface verify a b: cold {cold:.2f} s (empty cache), warm {warm:.2f} s (cache hits); "
              f"kface --help {help_time:.2f} s")


if __name__ == "__main__":
    main()
