"""Gallery search speed and recall: exact (faiss IndexFlat, the baseline) against kface's IVF and HNSW.

Galleries of 10k, 100k and 1M vectors are made from real embeddings (dlib's, of the Korean held-out
families' photos, from the kface cache: run ``kface benchmark identification`` once first) repeated with
Gaussian noise (sigma 0.02 per dimension, about the spread of one person's photos), so every gallery has
the clumpy structure of many photos per person. Queries are other real embeddings with fresh noise.
For each size: one-query-at-a-time latency p50/p99, recall@1 (the approximate top-1 is exact's top-1),
build time and index size, beside exact search timed in the same run. Then the SQLite path: enrolment
throughput into a gallery (vectors committed per second, in batches of 64), rebuilding its index from
SQLite, and the full ``Gallery.search_vectors`` latency. Goal: p50 <= 5 ms at 1M with recall@1 >= 99%.

    python bench/gallery_search.py [--sizes 10000,100000,1000000] [--queries 200] [--nprobe 8,16,24,32]
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KOREAN = REPO.parent / "shared" / "data" / "korean_family"
NOISE = 0.02


def real_embeddings() -> np.ndarray:
    """dlib embeddings of the held-out families' photos (cached by the identification benchmark)."""
    from kface.api import FaceOptions, load_verifier
    from kface.evaluation.groups import read_group_list

    families = read_group_list(REPO / "kface" / "models" / "korean-heldout-families.txt")
    with open(KOREAN / "identities.csv", encoding="utf-8") as handle:
        paths = [str(KOREAN / row["path"]) for row in csv.DictReader(handle) if row["family"] in families]
    verifier = load_verifier("dlib", options=FaceOptions(detector="auto", fallback="whole-image"))
    vectors, result = verifier.embed(paths, on_error="skip")
    if result.computed > len(paths) // 2:
        print(f"note: embedded {result.computed} images now (the cache was cold)", file=sys.stderr)
    return vectors[~np.isnan(vectors).any(axis=1)].astype(np.float32)


def synthetic(base: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(0, len(base), size=count)
    return (base[picks] + rng.normal(0, NOISE, size=(count, base.shape[1]))).astype(np.float32)


def timed_queries(index, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query alone (a user's search): (seconds per query, distances, ids)."""
    seconds, distances, ids = [], [], []
    for query in queries:
        start = time.perf_counter()
        d, i = index.search(query[None, :], k)
        seconds.append(time.perf_counter() - start)
        distances.append(d[0])
        ids.append(i[0])
    return np.array(seconds), np.array(distances), np.array(ids)


def percentiles(seconds: np.ndarray) -> str:
    return f"p50 {1000 * np.percentile(seconds, 50):.2f} ms, p99 {1000 * np.percentile(seconds, 99):.2f} ms"


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_size(base, queries, size, nprobes, hnsw_max, rng) -> None:
    import faiss

    from kface.galleries import index as gallery_index

    vectors = synthetic(base, size, rng)
    ids = np.arange(1, size + 1, dtype=np.int64)
    before = rss_mib()
    start = time.perf_counter()
    exact = gallery_index.build_index(ids, vectors, "euclidean", vectors.shape[1], 0, 0, kind="exact")
    exact_build = time.perf_counter() - start
    exact_seconds, exact_d, exact_ids = timed_queries(exact, queries)
    exact_mib = rss_mib() - before
    print(f"{size:>9,} exact: build {exact_build:.2f} s, {percentiles(exact_seconds)}, +{exact_mib:.0f} MiB")
    truth_d = exact_d[:, 0]
    rows = []
    before = rss_mib()
    start = time.perf_counter()
    ivf = gallery_index.build_index(ids, vectors, "euclidean", vectors.shape[1], 0, 0, kind="ivf")
    ivf_build = time.perf_counter() - start
    ivf_mib = rss_mib() - before
    for nprobe in nprobes:
        ivf.faiss_index.nprobe = nprobe
        seconds, d, found = timed_queries(ivf, queries)
        # A hit: the same vector as exact's top-1, or one exactly as near (ties between noisy copies).
        recall = float(np.mean((found[:, 0] == exact_ids[:, 0]) | (np.abs(d[:, 0] - truth_d) <= 1e-6)))
        rows.append((nprobe, seconds, recall))
        print(f"{size:>9,} ivf{gallery_index.ivf_lists(size)} nprobe {nprobe:>3}: {percentiles(seconds)}, recall@1 "
              f"{100 * recall:.2f}%, speedup p50 x{np.median(exact_seconds) / np.median(seconds):.1f}")
    print(f"{size:>9,} ivf: build {ivf_build:.2f} s (exact {exact_build:.2f} s), "
          f"{len(faiss.serialize_index(ivf.faiss_index)) / 2**20:.0f} MiB serialized, +{ivf_mib:.0f} MiB resident")
    del ivf
    if size <= hnsw_max:
        before = rss_mib()
        start = time.perf_counter()
        hnsw = gallery_index.build_index(ids, vectors, "euclidean", vectors.shape[1], 0, 0, kind="hnsw")
        hnsw_build = time.perf_counter() - start
        seconds, d, found = timed_queries(hnsw, queries)
        recall = float(np.mean((found[:, 0] == exact_ids[:, 0]) | (np.abs(d[:, 0] - truth_d) <= 1e-6)))
        print(f"{size:>9,} hnsw32 ef64: build {hnsw_build:.2f} s, {percentiles(seconds)}, "
              f"recall@1 {100 * recall:.2f}%, "
              f"+{rss_mib() - before:.0f} MiB resident")
        del hnsw


def bench_sqlite(base, queries, size, rng) -> None:
    """Enrolment throughput into a real gallery file, rebuild from SQLite, full search latency."""
    from kface.galleries.gallery import Gallery
    from kface.galleries.store import GalleryStore, ModelIdentity, NewImage

    vectors = synthetic(base, size, rng)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.kgallery"
        model = ModelIdentity("dlib@dlib-resnet-v1", "dlib", "dlib-resnet", "euclidean", 0.6144, vectors.shape[1])
        store = GalleryStore.create(path, model, (0.5, "bench"))
        start = time.perf_counter()
        for first in range(0, size, 64):
            store.add([NewImage(f"person{(first + j) // 8}", f"{first + j:064x}", f"img{first + j}.jpg", "hog",
                                vectors[first + j]) for j in range(min(64, size - first))], model.key)
        enrol = time.perf_counter() - start
        print(f"sqlite {size:,}: enrolment {size / enrol:,.0f} vectors/s (batches of 64, one transaction each), "
              f"file {path.stat().st_size / 2**20:.0f} MiB")
        gallery = Gallery(store)
        start = time.perf_counter()
        index = gallery.rebuild()
        print(f"sqlite {size:,}: index ({index.kind}) rebuilt from SQLite in {time.perf_counter() - start:.2f} s")
        gallery._index = None
        start = time.perf_counter()
        gallery.search_vectors(queries[:1])
        print(f"sqlite {size:,}: first search in a fresh process (index file read) {time.perf_counter() - start:.2f} s")
        seconds = []
        for query in queries:
            start = time.perf_counter()
            gallery.search_vectors(query[None, :], top=5)
            seconds.append(time.perf_counter() - start)
        print(f"sqlite {size:,}: Gallery.search_vectors top-5 identities, {percentiles(np.array(seconds))}")
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", default="8,16,24,32")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="Largest size to build HNSW at (slow to build).")
    parser.add_argument("--sqlite-size", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    rng = np.random.default_rng(args.seed)
    base = real_embeddings()
    order = rng.permutation(len(base))
    held = base[order[: args.queries]]
    base = base[order[args.queries:]]
    queries = (held + rng.normal(0, NOISE, size=held.shape)).astype(np.float32)
    print(f"{len(base)} real base embeddings, {len(queries)} queries; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")
    nprobes = [int(n) for n in args.nprobe.split(",")]
    for size in (int(s) for s in args.sizes.split(",")):
        bench_size(base, queries, size, nprobes, args.hnsw_max, rng)
    if args.sqlite_size:
        bench_sqlite(base, queries, args.sqlite_size, rng)
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
