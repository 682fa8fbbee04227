"""Grouping unknown faces by person (``kface cluster``), and scoring a grouping against known identities.

Two faces are linked when their distance is within a threshold; ``chinese-whispers`` (dlib's choice:
label propagation on that graph, seeded node order) splits linked groups joined by a few stray links,
``components`` keeps every connected group whole, and ``agglomerative`` (average linkage cut at the
threshold, scikit-learn) merges groups whose mean distance is within it. BCubed precision/recall/F1
measure a grouping against the true identities. Measured with ``bench/gallery_cluster.py`` (dlib):
average linkage is the default, because the two graph methods chain everyone into a few giant clusters
at the 1:1 threshold (F1 0.03 on the Korean held-out families, 0.04 on LFW, against 0.11 and 0.71), and
it is best or near best at every distance tried; its best distance, 0.45, is well below the 1:1 one.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

METHODS = ("chinese-whispers", "components", "agglomerative")
DEFAULT_METHOD = "agglomerative"
#: Measured link distances by model key (bench/gallery_cluster.py, agglomerative, BCubed F1 on the Korean
#: held-out groups, copies merged: dlib 0.551 at 0.45, 0.919 on the LFW sample; korean-v4 0.815 at 0.65,
#: their best, and 0.771 on LFW, whose own best is 0.952 at 0.55); other models use
#: their 1:1 threshold.
CLUSTER_THRESHOLDS: dict[str, float] = {"dlib@dlib-resnet-v1": 0.45, "korean@16562bed3fea1d9e": 0.65}
#: The BCubed F1 each of those thresholds gave on the Korean held-out groups, with the model's default
#: precision on a CPU (korean: its int8 copy; the float file gives 0.827), re-measured by the tests.
CLUSTER_F1: dict[str, float] = {"dlib@dlib-resnet-v1": 0.551, "korean@16562bed3fea1d9e": 0.815}
CHINESE_WHISPERS_ROUNDS = 100
_CHUNK = 2048


def linked_pairs(vectors: np.ndarray, distance, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of faces within ``threshold`` of each other, computed in chunks of rows."""
    firsts, seconds = [], []
    for start in range(0, len(vectors), _CHUNK):
        block = np.asarray(distance.matrix(vectors[start:start + _CHUNK], vectors))
        rows, cols = np.nonzero(block <= threshold)
        rows = rows + start
        keep = rows < cols
        firsts.append(rows[keep])
        seconds.append(cols[keep])
    return np.concatenate(firsts), np.concatenate(seconds)


def cluster(vectors: np.ndarray, distance, threshold: float, method: str = DEFAULT_METHOD, seed: int = 0) -> np.ndarray:
    """A cluster label per row of ``vectors`` (0 = the largest cluster, then by size)."""
    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}; choose one of: {', '.join(METHODS)}")
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) == 0:
        raise InputError("no faces to cluster")
    if len(vectors) == 1:
        return np.zeros(1, dtype=np.int64)
    if method == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        model = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, linkage="average",
                                        metric=distance.name)
        labels = model.fit_predict(vectors)
    else:
        first, second = linked_pairs(vectors, distance, threshold)
        if method == "components":
            labels = _components(len(vectors), first, second)
        else:
            labels = _chinese_whispers(len(vectors), first, second, np.random.default_rng(seed))
    return _by_size(labels)


def _components(count: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def _chinese_whispers(count: int, first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Biemann's Chinese whispers: each node, in a seeded random order, takes its neighbours' most common
    label (ties to the smallest), for a fixed number of rounds or until nothing changes."""
    neighbours: list[list[int]] = [[] for _ in range(count)]
    for a, b in zip(first.tolist(), second.tolist()):
        neighbours[a].append(b)
        neighbours[b].append(a)
    labels = np.arange(count)
    for _ in range(CHINESE_WHISPERS_ROUNDS):
        changed = False
        for node in rng.permutation(count).tolist():
            if not neighbours[node]:
                continue
            values, counts = np.unique(labels[neighbours[node]], return_counts=True)
            best = int(values[np.argmax(counts)])
            if best != labels[node]:
                labels[node] = best
                changed = True
        if not changed:
            break
    return labels


def _by_size(labels: np.ndarray) -> np.ndarray:
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.lexsort((values, -counts))  # largest first, ties by first label
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return rank[inverse]


def bcubed(labels: np.ndarray, truth: np.ndarray) -> dict:
    """BCubed precision, recall and F1 of cluster ``labels`` against true identities ``truth``."""
    labels = np.asarray(labels)
    truth = np.asarray(truth)
    _, cluster_of = np.unique(labels, return_inverse=True)
    _, class_of = np.unique(truth, return_inverse=True)
    joint = np.zeros((cluster_of.max() + 1, class_of.max() + 1), dtype=np.int64)
    np.add.at(joint, (cluster_of, class_of), 1)
    together = joint[cluster_of, class_of].astype(np.float64)
    precision = float(np.mean(together / joint.sum(axis=1)[cluster_of]))
    recall = float(np.mean(together / joint.sum(axis=0)[class_of]))
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / (precision + recall),
            "clusters": int(joint.shape[0]), "identities": int(joint.shape[1])}
