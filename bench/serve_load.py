"""Load check of `kface serve`: many verify requests from concurrent clients against a local server.

Starts `kface serve` on a free loopback port (a subprocess, as a user would run it), then sends
--requests POST /verify requests from --clients concurrent clients, cycling through pairs of the sample
portraits (same person and different people). Every answer is checked twice: its verdict against who
is in the photos, and its distance against the in-process Python API on the same bytes. Prints p50/p95
latency and requests/s, and as the baseline measured in the same run, the serial in-process
`Verifier.verify` rate (no HTTP, one at a time).

Usage: .venv/bin/python bench/serve_load.py [--requests 200] [--clients 8] [--workers N]
"""
from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
#: (photo A, photo B, same person?) from who the sample portraits show.
PAIRS = [("obama.jpg", "obama2.jpg", True), ("obama.jpg", "biden.jpg", False),
         ("obama2.jpg", "obama3.jpg", True), ("biden.jpg", "obama3.jpg", False)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            sys.exit(f"error: kface serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"error: kface serve did not answer on {url} in {timeout:.0f} s")
            time.sleep(0.2)


def in_process_baseline(photos: dict[str, bytes], count: int) -> tuple[dict[tuple[str, str], float], float]:
    """Each pair's distance from the Python API, and the serial verifications per second."""
    from kface.api import FaceOptions, load_verifier

    verifier = load_verifier(options=FaceOptions(cache=False))
    distances = {(a, b): verifier.verify(photos[a], photos[b]).distance for a, b, _ in PAIRS}  # also warms up
    started = time.perf_counter()
    for (a, b, _), _ in zip(itertools.cycle(PAIRS), range(count)):
        verifier.verify(photos[a], photos[b])
    return distances, count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, help="kface serve --workers (default: the server's)")
    parser.add_argument("--baseline", type=int, default=20, help="serial in-process verifications to time")
    args = parser.parse_args()
    import httpx2 as httpx

    photos = {name: (EXAMPLES / name).read_bytes() for pair in PAIRS for name in pair[:2]}
    expected, serial_rate = in_process_baseline(photos, args.baseline)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "kface", "serve", "--port", str(port), "--quiet"]
    if args.workers:
        command += ["--workers", str(args.workers)]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_until_up(url, server)
            workers = httpx.get(f"{url}/health").json()["limits"]["workers"]
            jobs = iter(range(args.requests))
            jobs_lock = threading.Lock()
            latencies: list[float] = []
            failures: list[str] = []

            def client() -> None:
                with httpx.Client(base_url=url, timeout=300) as session:
                    while True:
                        with jobs_lock:
                            job = next(jobs, None)
                        if job is None:
                            return
                        a, b, same = PAIRS[job % len(PAIRS)]
                        files = {"image_a": (a, photos[a], "image/jpeg"), "image_b": (b, photos[b], "image/jpeg")}
                        started = time.perf_counter()
                        response = session.post("/verify", files=files)
                        latencies.append(time.perf_counter() - started)
                        answer = response.json() if response.status_code == 200 else {}
                        if (response.status_code != 200 or answer["same"] is not same
                                or abs(answer["distance"] - expected[(a, b)]) > 1e-5):
                            failures.append(f"{a} vs {b}: {response.status_code} {response.text[:200]}")

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=30)

    p50, p95 = np.percentile(latencies, [50, 95])
    rate = len(latencies) / wall
    print(f"kface serve: {len(latencies)} POST /verify from {args.clients} concurrent clients, server workers "
          f"{workers}, {os.cpu_count()} CPU cores")
    print(f"  answered correctly: {len(latencies) - len(failures)}/{args.requests} (verdict and distance)")
    print(f"  latency p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(latencies):.2f} s; wall {wall:.1f} s")
    print(f"  throughput {rate:.2f} requests/s; serial in-process Verifier.verify {serial_rate:.2f}/s "
          f"({args.baseline} calls): server/serial {rate / serial_rate:.2f}x")
    for failure in failures[:5]:
        print(f"  failed: {failure}")
    if failures or len(latencies) != args.requests:
        sys.exit(1)


if __name__ == "__main__":
    main()
