"""Whole-process `kface verify a b`: cold (empty cache) and warm, against a minimal dlib script, same run.

    .venv/bin/python bench/cold_verify.py [--runs 5] [--models dlib,korean]

Each run is a fresh process. ``cold``: a new, empty cache folder, so detection, alignment and the
network all run. ``warm``: the same cache a second time (chips and embeddings are read back). The
baseline is the ten-line script a user would write with dlib directly (HOG at upsample 1, 5-point
landmarks, ``get_face_chip``, dlib's descriptor), timed in the same run on the same two images.
Printed: median wall seconds, and each as a ratio to the baseline; and the median CPU seconds (user +
system of the process and its children), which a machine shared with other work disturbs less. Targets (issue 16): cold
<= 0.5x the
dlib script, warm <= 0.3 s; the Korean model no worse than 1.2x stock (issue 15).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KFACE = REPO / ".venv" / "bin" / "kface"
PYTHON = REPO / ".venv" / "bin" / "python"

DLIB_SCRIPT = """
import sys, dlib, numpy as np
models = __import__("kface.models.dlib_files", fromlist=["model_file"])
detector = dlib.get_frontal_face_detector()
landmarks = dlib.shape_predictor(str(models.model_file(models.DLIB_LANDMARKS_5)))
network = dlib.face_recognition_model_v1(str(models.model_file(models.DLIB_RESNET)))
def vector(path):
    image = dlib.load_rgb_image(path)
    box = max(detector(image, 1), key=lambda r: r.area())
    return np.array(network.compute_face_descriptor(dlib.get_face_chip(image, landmarks(image, box))))
a, b = (vector(p) for p in sys.argv[1:3])
print("same" if np.linalg.norm(a - b) <= 0.6 else "different")
"""


#: Every run may write and reuse bytecode, as a user's Python does: this project's machines set
#: PYTHONDONTWRITEBYTECODE, which would make each process compile kface (and the script) from source.
BASE_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", default="dlib,korean", help="kface models to time (those not shipped are skipped)")
    parser.add_argument("images", nargs="*", default=[str(REPO / "examples" / "obama.jpg"),
                                                      str(REPO / "examples" / "obama2.jpg")])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from kface.models import shipped_names

    a, b = args.images[:2]
    models = [m for m in args.models.split(",") if m in shipped_names()]
    rows: dict[str, list[tuple[float, float]]] = {"dlib script": []}
    for model in models:
        rows[f"kface verify --model {model}, cold"] = []
        rows[f"kface verify --model {model}, warm"] = []
    for _ in range(args.runs):  # interleaved, so load on the machine hits every row alike
        rows["dlib script"].append(timed([str(PYTHON), "-c", DLIB_SCRIPT, a, b], dict(BASE_ENV)))
        for model in models:
            with tempfile.TemporaryDirectory() as cache:
                env = {**BASE_ENV, "KFACE_CACHE_DIR": cache}
                command = [str(KFACE), "verify", "--model", model, a, b]
                rows[f"kface verify --model {model}, cold"].append(timed(command, env))
                rows[f"kface verify --model {model}, warm"].append(timed(command, env))
    base_wall = statistics.median(wall for wall, _ in rows["dlib script"])
    base_cpu = statistics.median(cpu for _, cpu in rows["dlib script"])
    print(f"{Path(a).name} vs {Path(b).name}; {args.runs} runs each, interleaved")
    print("| run | median wall s | min wall s | wall / dlib script | median CPU s | CPU / dlib script |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in rows.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {name} | {wall:.2f} | {min(w for w, _ in runs):.2f} | {wall / base_wall:.2f} | {cpu:.2f} | "
              f"{cpu / base_cpu:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
