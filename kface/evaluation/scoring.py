"""Scoring a whole pair file with a verifier: `kface verify --pairs FILE --out results.csv`."""
from __future__ import annotations

import csv
import io
import os
from typing import Optional

import numpy as np

from ..outputs import write_text
from ..pairs import read_pairs

RESULT_HEADER = ["split", "path_a", "path_b", "label", "distance", "same", "threshold", "found_a", "found_b",
                 "error"]


def score_pair_file(verifier, pairs_file: os.PathLike, out: os.PathLike, root: Optional[os.PathLike] = None) -> dict:
    """Distance and decision for every pair; images that fail are reported per row, not fatal.

    Writes ``out`` (CSV, atomically) and returns a summary: pair count, failures and, where the file
    has labels, the accuracy at the verifier's threshold.
    """
    pairs = read_pairs(pairs_file, root)
    unique = pairs.unique_paths()
    vectors, result = verifier.embed(unique, on_error="skip")
    row_of = {path: i for i, path in enumerate(unique)}
    index_a = np.array([row_of[p] for p in pairs.abs_path_a])
    index_b = np.array([row_of[p] for p in pairs.abs_path_b])
    distances = verifier.distances(vectors[index_a], vectors[index_b])
    failed = np.isnan(distances)
    same = distances <= verifier.threshold
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULT_HEADER)
    for i in range(len(pairs)):
        a, b = pairs.abs_path_a[i], pairs.abs_path_b[i]
        error = result.errors.get(a) or result.errors.get(b) or ""
        writer.writerow([pairs.split[i], pairs.path_a[i], pairs.path_b[i], int(pairs.label[i]),
                         "" if failed[i] else f"{distances[i]:.6f}", "" if failed[i] else int(same[i]),
                         f"{verifier.threshold:.6f}", int(result.found[index_a[i]]), int(result.found[index_b[i]]),
                         error])
    write_text(out, buffer.getvalue())
    scored = ~failed
    accuracy = float(np.mean(same[scored] == (pairs.label[scored] == 1))) if scored.any() else None
    return {"pairs": len(pairs), "scored": int(scored.sum()), "failed": int(failed.sum()),
            "threshold": verifier.threshold, "accuracy": accuracy, "out": str(out),
            "accuracy_text": "no pair scored" if accuracy is None else
            f"accuracy {100 * accuracy:.2f}% at threshold {verifier.threshold:.4f} on {int(scored.sum())} pairs"}
