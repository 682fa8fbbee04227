"""Enrolling vectors already computed: the rows of a Parquet embedding dataset (``kface enroll --embeddings``)."""
from __future__ import annotations

import os
from typing import Callable, Optional

from ..embeddings.parquet import read_vectors, verifier_model_key
from .gallery import EnrolmentReport, Gallery
from .store import NewImage

#: Stored rows committed together: no network runs, so a transaction can hold many.
STORED_BATCH = 4096


def enroll_embeddings(gallery: Gallery, folder: os.PathLike, *, batch: Optional[int] = None,
                      on_commit: Optional[Callable[[EnrolmentReport], None]] = None) -> EnrolmentReport:
    """Enroll every row of the Parquet dataset ``folder`` that has a vector, under its identity column.

    The rows must be of the gallery's model (the same model key as its verifier's); no network runs.
    Content already enrolled is counted as the store counts it for photos, rows without an identity are
    reported, and every ``batch`` rows are committed (a rerun finishes an interrupted enrolment).
    """
    stored = read_vectors(folder, verifier_model_key(gallery.verifier))
    report = EnrolmentReport(total=len(stored.paths))
    new, labels = [], {}
    for i, path in enumerate(stored.paths):
        if not stored.identities[i]:
            report.skipped[path] = f"{path}: the row has no identity"
            continue
        new.append(NewImage(stored.identities[i], stored.sha256[i], path, stored.stages[i], stored.vectors[i]))
        labels[stored.sha256[i]] = path
    step = batch or STORED_BATCH
    for start in range(0, len(new), step):
        added = gallery.add_images(new[start:start + step])
        report.enrolled += added.added
        report.already += added.already
        report.conflicts.update({labels[sha]: owner for sha, owner in added.conflicts.items()})
        if on_commit is not None:
            on_commit(report)
    return report
