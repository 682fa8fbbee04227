"""Throughput and peak memory of `kface embed` over Korean 128 px crops, against today's path, same run.

    .venv/bin/python bench/embed_throughput.py [--images 600] [--seed 0] [--rounds 1] [--baseline-commit b7f3352]

A seeded choice of ``--images`` crops from ``../shared/data/korean_family/images`` is embedded by the whole
command (``kface embed ... --detector auto --fallback whole-image``, a fresh empty KFACE_CACHE_DIR each
time) in three configurations, one after the other:

- ``before``: kface at ``--baseline-commit`` (the commit before the streaming pipeline and the ONNX
  engine), checked out into a temporary ``git worktree`` and run with this venv;
- ``workers 0``: today's code with ``--workers 0`` (everything in one process);
- ``float``: today's code with the default workers, the default model's float file (``KFACE_PRECISION=float``);
- ``pipeline``: today's code with the default workers and defaults (the int8 copy on the CPU).

``--rounds N`` runs the four N times, interleaved, and reports the median time and CPU and the highest
peak memory (the machine is shared: one round is noisy).

For each: wall time and images/s, the ratio to ``before``, CPU seconds (user + system of the whole tree;
on this shared machine the wall-time ratio moves with the load, the CPU ratio much less), the peak over the process
tree (sampled every
100 ms) of the summed RSS and of the summed PSS (RSS counts pages forked workers share with their parent
once per process; PSS splits them), and the faces found (stages other than whole-image/none), with the
images ``before`` found that this configuration did not. Targets (issue 16): >= 3x ``before``'s
images/s, peak <= 500 MB, faces found the same or more.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "korean_family" / "images"
OPTIONS = ["--detector", "auto", "--fallback", "whole-image", "--quiet"]


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, from each process's own children lists (no scan of every process:
    the sampler must not take CPU from what it measures)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB, 0 for a process that has gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            values = {line.split(":")[0]: int(line.split()[1]) for line in handle if line.split()[-1:] == ["kB"]}
        return values.get("Rss", 0), values.get("Pss", 0)
    except (OSError, ValueError, IndexError):
        return 0, 0


def run(command: list[str], env: dict, cwd: Path) -> tuple[float, float, float, float]:
    """Wall seconds, CPU seconds (user + system, the process and the children it waited for) and peak
    summed RSS, PSS (MB) of ``command``'s process tree."""
    peak = [0, 0]
    stderr = tempfile.TemporaryFile()
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = pss = 0
            for pid in _tree(process.pid):
                r, p = _memory_kb(pid)
                rss, pss = rss + r, pss + p
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)  # wait4: the CPU time too, which load barely changes
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        stderr.seek(0)
        sys.exit(f"error: {' '.join(command[:4])} ... failed ({process.returncode}): {stderr.read().decode()[-500:]}")
    return seconds, usage.ru_utime + usage.ru_stime, peak[0] / 1024, peak[1] / 1024


def found_set(npz: Path) -> set[str]:
    with np.load(npz) as data:
        return {str(p) for p, s in zip(data["paths"], data["stages"]) if str(s) not in ("whole-image", "none")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are reported")
    parser.add_argument("--baseline-commit", default="b7f3352",
                        help="kface before the streaming pipeline (a commit of this repository)")
    args = parser.parse_args()
    images = sorted(str(p) for p in DATA.glob("*.jpg"))
    if len(images) < args.images:
        sys.exit(f"error: found {len(images)} images under {DATA}, need {args.images}")
    chosen = random.Random(args.seed).sample(images, args.images)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        tree = work / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline_commit], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Bytecode compiled ahead for both trees, and reused, as a user's install has it (this project's
        # machines set PYTHONDONTWRITEBYTECODE, which would make each run compile kface from source).
        for root in (tree, REPO):
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "kface")], check=True,
                           stdout=subprocess.DEVNULL)
        base_env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        try:
            runs = {"before": (tree, [], {}), "workers 0": (REPO, ["--workers", "0"], {}),
                    "float": (REPO, [], {"KFACE_PRECISION": "float"}), "pipeline": (REPO, [], {})}
            rounds: dict[str, list] = {label: [] for label in runs}
            for round_number in range(args.rounds):
                for label, (root, extra, variables) in runs.items():
                    name = f"{label.replace(' ', '')}-{round_number}"
                    cache, out = work / f"cache-{name}", work / f"{name}.npz"
                    # PYTHONPATH first: the baseline tree's kface, not the editable install's.
                    env = {**base_env, **variables, "KFACE_CACHE_DIR": str(cache), "PYTHONPATH": str(root)}
                    command = [sys.executable, "-m", "kface", "embed", *chosen, "--out", str(out), *OPTIONS, *extra]
                    seconds, cpu, rss, pss = run(command, env, root)
                    rounds[label].append((seconds, cpu, rss, pss, found_set(out)))
                    print(f"  ({label}, round {round_number + 1}: {seconds:.2f} s)", flush=True)
            results = {label: (statistics.median(r[0] for r in runs_of), statistics.median(r[1] for r in runs_of),
                               max(r[2] for r in runs_of), max(r[3] for r in runs_of), runs_of[-1][4])
                       for label, runs_of in rounds.items()}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_seconds, base_cpu, _, _, base_found = results["before"]
    load = os.getloadavg()[0]
    print(f"kface embed, {args.images} Korean 128 px crops (seed {args.seed}), {' '.join(OPTIONS[:4])}, "
          f"empty cache, whole process, {os.cpu_count()} CPUs, median of {args.rounds} round(s), "
          f"load average {load:.1f} at the end")
    for label, (seconds, cpu, rss, pss, found) in results.items():
        lost = len(base_found - found)
        print(f"  {label:10s} {seconds:6.2f} s  {args.images / seconds:6.1f} images/s  "
              f"{base_seconds / seconds:4.2f}x before  CPU {cpu:6.1f} s ({base_cpu / cpu:4.2f}x less)  "
              f"peak RSS {rss:6.0f} MB  PSS {pss:6.0f} MB  "
              f"faces found {len(found)} (before {len(base_found)}; lost {lost}, gained {len(found - base_found)})")
    print("targets: pipeline >= 3x before, peak <= 500 MB, faces found the same or more")


if __name__ == "__main__":
    main()
