"""Faces per second: dlib's own descriptor (dlib-native) vs the PyTorch port (dlib-torch), on the CPU.

Target: dlib-torch at batch 64 at least 3x dlib-native. Also times the one-off .dat conversion against
a load from the conversion cache. Chips are real aligned LFW faces cut with dlib, as in the tests.

    python bench/dlib_torch_speed.py [--chips 128] [--native-chips 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

LFW_IMAGES = (Path(__file__).parents[1] / ".." / "shared" / "data" / "lfw" / "images").resolve()


def lfw_chips(count: int) -> np.ndarray:
    """Aligned 150x150 chips of the first image of the first ``count`` LFW people with a detection."""
    from kface.errors import NoFaceError
    from kface.faces.detect import FaceFinder
    from kface.faces.images import load_image

    finder = FaceFinder()
    chips = []
    for person in sorted(p for p in LFW_IMAGES.iterdir() if p.is_dir()):
        try:
            chips.append(finder.find(load_image(min(person.glob("*.jpg")))).chip)
        except NoFaceError:
            continue
        if len(chips) == count:
            break
    return np.stack(chips)


def best_rate(run, faces: int, repeats: int) -> float:
    """Faces per second of the fastest of ``repeats`` runs (other load on the machine only slows runs down)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return faces / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=128, help="chips for the batched runs (default 128)")
    parser.add_argument("--native-chips", type=int, default=32,
                        help="chips for dlib's one-at-a-time run (default 32; ~0.13 s each)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    args = parser.parse_args()

    import dlib
    import torch

    from kface.backbones import get_spec
    from kface.backbones.dlib_torch import BATCH_SIZE, DlibTorchBackbone, load_dlib_resnet
    from kface.models.dlib_files import DLIB_RESNET, model_file

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"CPU threads: torch {torch.get_num_threads()}, dlib 1 (dlib-bin has no BLAS); "
          f"torch {torch.__version__}, dlib {dlib.__version__}")

    with tempfile.TemporaryDirectory() as fresh_cache:
        os.environ["KFACE_CACHE_DIR"] = fresh_cache
        start = time.perf_counter()
        load_dlib_resnet()
        first_load = time.perf_counter() - start
        start = time.perf_counter()
        load_dlib_resnet()
        cached_load = time.perf_counter() - start
        print(f"load: first (parse .dat + convert + cache) {first_load:.3f} s, cached {cached_load:.3f} s")

        chips = lfw_chips(args.chips)
        print(f"chips: {len(chips)} aligned LFW faces")
        native = dlib.face_recognition_model_v1(str(model_file(DLIB_RESNET)))
        ported = DlibTorchBackbone(get_spec("dlib-torch"), device="cpu")

    one_chip = chips[:args.native_chips]
    native_single = best_rate(lambda: [native.compute_face_descriptor(chip) for chip in one_chip],
                              len(one_chip), 1)
    batch = list(chips[:BATCH_SIZE])
    native_batch = best_rate(lambda: native.compute_face_descriptor(batch), len(batch), 1)
    ported.embed_chips(chips[:BATCH_SIZE])  # warm-up: first-call allocations and kernel selection
    ported_rate = best_rate(lambda: ported.embed_chips(chips), len(chips), args.repeats)

    print(f"dlib-native, one chip per call:       {native_single:7.1f} faces/s  ({len(one_chip)} chips)")
    print(f"dlib-native, list of {len(batch)} chips per call: {native_batch:7.1f} faces/s")
    print(f"dlib-torch, batch {BATCH_SIZE}, CPU:           {ported_rate:7.1f} faces/s  ({len(chips)} chips, "
          f"best of {args.repeats})")
    baseline = max(native_single, native_batch)
    print(f"ratio dlib-torch / best dlib-native: {ported_rate / baseline:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
