"""Memory of `kface serve` under many large uploads at once: the in-flight cap against no cap.

Starts `kface serve` twice (real processes on loopback ports): with ``--max-in-flight 4`` (the cap under
test) and with ``--max-in-flight`` equal to the number of uploads (the baseline: every body let in at
once, as before the guard). Each gets --uploads concurrent POST /verify of --mb MB (two sample
portraits padded with trailing bytes). Prints, per server, the growth of peak resident memory (VmHWM)
over the run, the documented bound (``max_in_flight × 3 × --max-upload-mb``), the answers' statuses,
and the capped growth as a ratio of the uncapped one.

Usage: .venv/bin/python bench/serve_memory.py [--uploads 16] [--mb 20] [--cap 4]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_serve_limits import SAME, Server, padded, post  # noqa: E402  (the tests' real-process client)

from kface.serve.guard import memory_bound_bytes  # noqa: E402

MIB = 2 ** 20


def measure(cap: int, uploads: int, megabytes: int) -> dict:
    limit_mb = megabytes + 1
    server = Server("--max-in-flight", cap, "--max-upload-mb", limit_mb, "--body-timeout", 60, "--quiet")
    try:
        half = megabytes * MIB // 2
        files = {"image_a": padded(SAME["image_a"], half), "image_b": padded(SAME["image_b"], half)}
        server.get("/health")
        before = server.memory("VmHWM")
        started = time.perf_counter()

        def upload(_):
            connection = server.connection(timeout=600)
            try:
                return post(connection, "/verify", files)
            finally:
                connection.close()

        with ThreadPoolExecutor(uploads) as pool:
            answers = list(pool.map(upload, range(uploads)))
        return {"cap": cap, "growth": server.memory("VmHWM") - before, "seconds": time.perf_counter() - started,
                "bound": memory_bound_bytes(cap, limit_mb * MIB),
                "statuses": Counter(status for status, _ in answers),
                "right": sum(1 for status, answer in answers if status == 200 and answer["same"] is True)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=16)
    parser.add_argument("--mb", type=int, default=20, help="Size of each request in MiB.")
    parser.add_argument("--cap", type=int, default=4, help="--max-in-flight of the capped server.")
    args = parser.parse_args()
    rows = [measure(args.cap, args.uploads, args.mb), measure(args.uploads, args.uploads, args.mb)]
    for row in rows:
        print(f"--max-in-flight {row['cap']:>2}: {args.uploads} x {args.mb} MiB uploads, peak RSS +"
              f"{row['growth'] / MIB:.0f} MiB (documented bound for bodies {row['bound'] / MIB:.0f} MiB), "
              f"{row['right']}/{args.uploads} answered right, statuses {dict(row['statuses'])}, "
              f"{row['seconds']:.1f} s")
    capped, uncapped = rows
    print(f"capped / uncapped peak growth: {capped['growth'] / max(uncapped['growth'], 1):.2f}x")


if __name__ == "__main__":
    main()
