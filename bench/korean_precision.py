"""The Korean model's two shipped copies, float16-stored weights against int8, same run, interleaved.

    .venv/bin/python bench/korean_precision.py [--seconds 3] [--rounds 3] [--threads N]

Chips are the sample portraits' aligned chips, tiled. Each round times both files at batch 1 and batch
64 (after a warm-up call), alternating so that the machine's load falls on both alike; the table gives
the median over rounds in faces/s (each face is two chips inside the graph: flip averaging), the int8
copy's ratio to the float file, the resident memory each session added (created and run once), and the parity of their
vectors.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from onnx_speed import onnx_session, sample_chips, throughput  # noqa: E402


def session_memory_mb(path: Path) -> float:
    """Resident memory one session of ``path`` adds (created and run on a batch of 64), measured in a fresh
    process after onnxruntime is imported, so that neither file's session hides under the other's."""
    probe = ("import numpy as np, onnx_speed, onnxruntime\n"
             "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
             "chips = np.concatenate([onnx_speed.sample_chips()] * 10)[:64]\n"
             "before = rss(); onnx_speed.onnx_session(__import__('pathlib').Path(%r))(chips); print(rss() - before)")
    out = subprocess.run([sys.executable, "-c", probe % str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'bench'}"})
    return float(out.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per file, batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: cores)")
    args = parser.parse_args()

    from kface.engines.runtime import compare_vectors, usable_cores
    from kface.models import MODEL_FAMILIES, card, network_path

    body = card("korean")
    family = MODEL_FAMILIES["korean"]
    files = {"float": network_path(family), "int8": network_path(family, variant=body["int8"])}
    chips = sample_chips()
    sessions, memory = {}, {}
    for name, path in files.items():
        sessions[name] = onnx_session(path, args.threads)
        memory[name] = session_memory_mb(path)
    rates = {name: {1: [], 64: []} for name in files}
    for _ in range(args.rounds):
        for batch in (1, 64):
            for name, embed in sessions.items():
                rates[name][batch].append(throughput(embed, chips, batch, args.seconds))
    parity = compare_vectors(sessions["float"](chips), sessions["int8"](chips))
    print(f"korean {body['version']}: {len(chips)} sample chips, tiled; {args.threads or usable_cores()} threads; "
          f"median of {args.rounds} interleaved rounds of ~{args.seconds:.0f} s")
    print("| file | size MiB | faces/s, batch 1 | faces/s, batch 64 | vs float (b1 / b64) | resident MB of a session "
          "(batch 64) |")
    print("|---|---:|---:|---:|---:|---:|")
    median = {name: {batch: statistics.median(values) for batch, values in by.items()} for name, by in rates.items()}
    for name, path in files.items():
        b1, b64 = median[name][1], median[name][64]
        print(f"| {path.name} | {path.stat().st_size / 2**20:.1f} | {b1:.1f} | {b64:.1f} | "
              f"{b1 / median['float'][1]:.2f} / {b64 / median['float'][64]:.2f} | {memory[name]:.0f} |")
    print(f"parity on these chips: cosine >= {parity['min_cosine']:.5f} (mean {parity['mean_cosine']:.6f}), "
          f"distances within {parity['distance_max_abs_diff']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
