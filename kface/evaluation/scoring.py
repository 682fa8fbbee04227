"""Scoring with verifiers: a whole pair file (`kface verify --pairs FILE --out results.csv`), and the model
loop every benchmark runs (:func:`score_models`)."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..api import FaceOptions, load_verifier
from ..distances import Distance
from ..pairs import read_pairs
from ..util.cache import CacheSetting
from ..util.outputs import write_text

RESULT_HEADER = ["split", "path_a", "path_b", "label", "distance", "same", "probability", "threshold", "found_a",
                 "found_b", "error"]


@dataclass(frozen=True)
class MeasuredPairs:
    """Each pair's distance (NaN where an image failed) and the embedding result of the unique images."""

    distances: np.ndarray
    result: Any  # kface.embeddings.embedder.EmbeddingResult, one row per unique image
    row_a: np.ndarray  # each pair's first image's row in ``result``
    row_b: np.ndarray


def measure_pairs(verifier, paths_a: Sequence[str], paths_b: Sequence[str]) -> MeasuredPairs:
    """Embed every unique image once (failures skipped, not fatal), then measure each pair ``(a[i], b[i])``."""
    unique = sorted(set(paths_a) | set(paths_b))
    vectors, result = verifier.embed(unique, on_error="skip")
    row_of = {path: i for i, path in enumerate(unique)}
    row_a = np.array([row_of[p] for p in paths_a], dtype=np.int64)
    row_b = np.array([row_of[p] for p in paths_b], dtype=np.int64)
    distances = np.asarray(verifier.distances(vectors[row_a], vectors[row_b]), dtype=np.float64)
    return MeasuredPairs(distances, result, row_a, row_b)


def _image_ages(verifier, measured: MeasuredPairs) -> list[Optional[dict]]:
    """Each unique image's estimated age where the verifier's answers read them (None per image elsewhere)."""
    result = measured.result
    ages: list[Optional[dict]] = [None] * len(result.paths)
    if not verifier.needs_ages():
        return ages
    rows = [row for row, stage in enumerate(result.stages) if stage not in ("error", "none")]
    if rows:
        subset = replace(result, embeddings=result.embeddings[rows])
        for row, age in zip(rows, verifier.estimated_ages([result.paths[row] for row in rows], subset)):
            ages[row] = age
    return ages


def score_pair_file(verifier, pairs_file: os.PathLike, out: os.PathLike, root: Optional[os.PathLike] = None) -> dict:
    """Distance and decision for every pair; images that fail are reported per row, not fatal.

    Writes ``out`` (CSV, atomically) and returns a summary: pair count, failures and, where the file
    has labels, the accuracy at the verifier's threshold.
    """
    pairs = read_pairs(pairs_file, root)
    measured = measure_pairs(verifier, pairs.abs_path_a, pairs.abs_path_b)
    distances, result, index_a, index_b = measured.distances, measured.result, measured.row_a, measured.row_b
    failed = np.isnan(distances)
    same = Distance.is_same(distances, verifier.threshold)
    ages = _image_ages(verifier, measured)
    probabilities = verifier.pair_probabilities(distances, [ages[i] for i in index_a], [ages[i] for i in index_b])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULT_HEADER)
    for i in range(len(pairs)):
        a, b = pairs.abs_path_a[i], pairs.abs_path_b[i]
        error = result.errors.get(a) or result.errors.get(b) or ""
        writer.writerow([pairs.split[i], pairs.path_a[i], pairs.path_b[i], int(pairs.label[i]),
                         "" if failed[i] else f"{distances[i]:.6f}", "" if failed[i] else int(same[i]),
                         "" if failed[i] or probabilities is None else f"{probabilities[i]:.4f}",
                         f"{verifier.threshold:.6f}", int(result.found[index_a[i]]), int(result.found[index_b[i]]),
                         error])
    write_text(out, buffer.getvalue())
    scored = ~failed
    accuracy = float(np.mean(same[scored] == (pairs.label[scored] == 1))) if scored.any() else None
    expected = (verifier.answers.expected(verifier.operating_point)
                if verifier.answers is not None and verifier.threshold_source != "--threshold" else {})
    return {"pairs": len(pairs), "scored": int(scored.sum()), "failed": int(failed.sum()),
            "threshold": verifier.threshold, "operating_point": verifier.operating_point, **expected,
            "accuracy": accuracy, "out": str(out),
            "accuracy_text": "no pair scored" if accuracy is None else
            f"accuracy {100 * accuracy:.2f}% at threshold {verifier.threshold:.4f} on {int(scored.sum())} pairs"}


def score_models(models: Sequence[str], score: Callable[[Any, str], dict], write: Callable[[list[dict]], None], *,
                 device: str = "auto", cache: Union[bool, CacheSetting] = True, progress: bool = False,
                 log: Callable[[str], None] = lambda text: None) -> list[dict]:
    """The benchmarks' model loop: each of ``models`` (a shipped name or a checkpoint path) loaded with the
    faces every protocol reads (detector ``auto``, whole-image fallback), scored by ``score(verifier, name)``
    into a row, its verifier closed, and ``write(rows)`` called after each row; returns the rows."""
    rows: list[dict] = []
    for name in models:
        log(f"scoring model {name}")
        verifier = load_verifier(name, options=FaceOptions(fallback="whole-image", device=device, cache=cache,
                                                           progress=progress))
        try:
            rows.append(score(verifier, name))
        finally:
            verifier.embedder.close()
        write(rows)
    return rows
