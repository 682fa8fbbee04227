"""Dataset-scale embedding: the single-process path against Ray Data with 1 and 2 actors, same images, one run.

    .venv/bin/python bench/ray_scale.py [--images 2000] [--seed 0] [--shard-rows 128] [--json-out FILE]

A seeded choice of ``--images`` photos of ``../shared/data/korean_family`` (its manifest's rows, with their
labels) is embedded into a fresh Parquet dataset three times, the default model, no cache:

- ``single``: :func:`kface.scale.batches.embed_dataset` (face finding in a process pool of the CPU
  cores, the network in this process);
- ``ray 1`` and ``ray 2``: :func:`kface.scale.embed.embed_dataset_ray` on one Ray instance started here
  (``ray.init`` with this machine's cores) with 1 and 2 embedding actors.

Each path runs twice, on the first ``--small`` images and then on all of them: wall time and images/s of the
whole call, and, from the difference of the two, images/s and CPU seconds per image with every fixed cost
taken out (the start of the actors and the pool, the model loads; Ray itself is started once, before
both). CPU seconds are summed over this process and every process below it (Ray's raylet, GCS, actors and
helpers, the face-finding pool), sampled from /proc every 100 ms. Then the ratios the issue asks for: ray 2 / ray 1
images/s (target >= 1.7 on 2 cores) and ray CPU-s/image / single CPU-s/image (target <= 1.1), and whether
the three outputs hold the same rows and vectors (max difference).

The machine is shared with other work: wall times move with its load; CPU seconds much less.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "korean_family"
TICKS = os.sysconf("SC_CLK_TCK")


class TreeCpu:
    """CPU seconds of this process and its descendants, sampled from /proc (a process that ends keeps
    the last value seen, so at most one sampling interval of its time is lost)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        parents, cpu = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry)
            parents[pid] = int(fields[1])
            cpu[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / TICKS
        ours = {os.getpid()}
        changed = True
        while changed:
            changed = False
            for pid, parent in parents.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        with self._lock:
            for key, seconds in cpu.items():
                if key[0] in ours:
                    self.seen[key] = seconds

    def snapshot(self) -> dict:
        self.sample()
        with self._lock:
            return dict(self.seen)

    @staticmethod
    def between(first: dict, last: dict) -> float:
        return sum(seconds - first.get(key, 0.0) for key, seconds in last.items())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def chosen_items(count: int, seed: int):
    from kface.scale.batches import dataset_items

    items = dataset_items("csv", DATA, {"manifest": str(DATA / "identities.csv")})
    if count > len(items):
        raise SystemExit(f"--images {count}: the data has {len(items)}")
    return sorted(random.Random(seed).sample(items, count), key=lambda item: item.path)


def run_once(run, items, out: Path, cpu: TreeCpu) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the process tree, summary) of one call into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    before = cpu.snapshot()
    started = time.perf_counter()
    summary = run(items, out)
    wall = time.perf_counter() - started
    return wall, TreeCpu.between(before, cpu.snapshot()), summary


def measure(name: str, run, items, out: Path, cpu: TreeCpu, small: int) -> dict:
    """One path on the first ``small`` items, then on all: the difference is the cost of the extra images
    with every fixed cost (Ray's and the actors' start, the model loads, the pool) taken out."""
    wall_small, cpu_small, _ = run_once(run, items[:small], out, cpu)
    wall, cpu_all, summary = run_once(run, items, out, cpu)
    extra = len(items) - small
    row = {"name": name, "rows": summary["rows"], "computed": summary["computed"], "wall_s": wall,
           "images_per_s": summary["computed"] / wall, "cpu_s": cpu_all,
           "marginal_images_per_s": extra / (wall - wall_small),
           "marginal_cpu_s_per_image": (cpu_all - cpu_small) / extra}
    print(f"{name:8s} {wall:7.1f} s  {row['images_per_s']:6.1f} img/s overall  "
          f"{row['marginal_images_per_s']:6.1f} img/s and {1000 * row['marginal_cpu_s_per_image']:6.1f} ms CPU/img "
          f"past the first {small} (start-up excluded)", flush=True)
    return row


def vectors_by_path(out: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kface.embeddings.parquet import shard_files

    table = pa.concat_tables([pq.read_table(shard) for shard in shard_files(out)])
    return {row["path"]: row for row in table.select(["path", "stage", "error_kind", "embedding"]).to_pylist()}


def compare(first: dict, second: dict) -> float:
    """The largest vector difference between two outputs (inf where rows differ)."""
    if first.keys() != second.keys():
        return float("inf")
    largest = 0.0
    for path, row in first.items():
        other = second[path]
        if (row["stage"], row["error_kind"]) != (other["stage"], other["error_kind"]):
            return float("inf")
        if (row["embedding"] is None) != (other["embedding"] is None):
            return float("inf")
        if row["embedding"] is not None:
            largest = max(largest, float(np.abs(np.array(row["embedding"]) - np.array(other["embedding"])).max()))
    return largest


def stage_costs(paths: list[str]) -> dict:
    """CPU seconds per image of the face stage (decode, detect, align) and of the network, in this process
    as in a Ray actor (no pool, no cache, one thread each), for a plan of which part GPU nodes take over."""
    from kface.scale.batches import EmbedSettings
    from kface.scale.embed import one_thread_each

    verifier = EmbedSettings().verifier(cache=False, workers=0)
    one_thread_each(verifier)
    embedder = verifier.embedder
    started = time.process_time()
    entries, _ = embedder.faces(paths, on_error="skip")
    faces = time.process_time() - started
    chips = np.stack([entry.chip for entry in entries if entry is not None and entry.chip is not None])
    embedder.backbone.embed_chips(chips[:2])  # the session is created outside the timing
    started = time.process_time()
    embedder.backbone.embed_chips(chips)
    network = time.process_time() - started
    return {"images": len(paths), "faces": len(chips), "face_stage_cpu_s_per_image": faces / len(paths),
            "network_cpu_s_per_face": network / len(chips)}


def photo_paths(folder: Path, copies: int) -> list[str]:
    """The photos of ``folder``, each named ``copies`` times (the cache is off: each is computed again)."""
    photos = sorted(str(path) for path in folder.glob("*.jpg"))
    return photos * copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", type=int, default=200, help="Images of the first, short run of each path.")
    parser.add_argument("--shard-rows", type=int, default=128)
    parser.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "samples"),
                        help="A folder of full-size photos (about 1-3 megapixels) whose per-stage CPU cost is measured "
                             "too, each photo 10 times.")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: the real-face data lives in ../shared beside the checkout")
    import ray

    from kface.engines.runtime import usable_cores
    from kface.scale.batches import EmbedSettings, embed_dataset
    from kface.scale.embed import embed_dataset_ray

    items = chosen_items(args.images, args.seed)
    settings = EmbedSettings()
    cpu = TreeCpu()
    folder = Path(tempfile.mkdtemp(prefix="ray-scale-"))
    rows = []
    try:
        rows.append(measure("single", lambda i, o: embed_dataset(i, o, settings, cache=False,
                                                                shard_rows=args.shard_rows),
                            items, folder / "single.parquet", cpu, args.small))
        started = time.perf_counter()
        ray.init(num_cpus=usable_cores(), include_dashboard=False, configure_logging=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - started:.1f} s", flush=True)
        for workers in (1, 2):
            rows.append(measure(f"ray {workers}", lambda i, o, w=workers: embed_dataset_ray(
                i, o, settings, workers=w, shard_rows=args.shard_rows), items,
                folder / f"ray{workers}.parquet", cpu, args.small))
        outputs = {row["name"]: vectors_by_path(folder / f"{row['name'].replace(' ', '')}.parquet") for row in rows}
    finally:
        cpu.close()
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    single, ray1, ray2 = rows
    result = {"images": args.images, "seed": args.seed, "cores": usable_cores(), "rows": rows,
              "ray2_over_ray1_images_per_s": ray2["marginal_images_per_s"] / ray1["marginal_images_per_s"],
              "ray2_cpu_per_image_over_single": ray2["marginal_cpu_s_per_image"] / single["marginal_cpu_s_per_image"],
              "ray1_cpu_per_image_over_single": ray1["marginal_cpu_s_per_image"] / single["marginal_cpu_s_per_image"],
              "max_vector_difference": {name: compare(outputs["single"], outputs[name]) for name in ("ray 1", "ray 2")}}
    print(f"ray 2 / ray 1 images/s (start-up excluded): {result['ray2_over_ray1_images_per_s']:.2f}x (target >= 1.7)")
    print(f"ray CPU-s/image / single (start-up excluded): ray 1 {result['ray1_cpu_per_image_over_single']:.2f}, "
          f"ray 2 {result['ray2_cpu_per_image_over_single']:.2f} (target <= 1.1)")
    print(f"same rows, max vector difference against single: {result['max_vector_difference']}")
    result["stage_costs"] = {"crops": stage_costs([item.file for item in items[:300]])}
    if Path(args.photos).is_dir():
        result["stage_costs"]["photos"] = stage_costs(photo_paths(Path(args.photos), 10))
    for kind, costs in result["stage_costs"].items():
        print(f"{kind}: face stage {1000 * costs['face_stage_cpu_s_per_image']:.1f} ms CPU/image, network "
              f"{1000 * costs['network_cpu_s_per_face']:.1f} ms CPU/face ({costs['images']} images, one process)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
