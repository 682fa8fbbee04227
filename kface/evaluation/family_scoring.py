"""Scoring on the family protocol's pairs: a fixed model on every fold, a training recipe trained per fold."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..api import FaceOptions, load_verifier
from ..datasets import DatasetIndex
from ..errors import InputError
from ..metrics import accuracy_at, kfold_protocol, separation
from ..util.cache import CacheSetting, cache_setting
from ..util.outputs import write_text
from .families import PAIR_KINDS, FamilyProtocol, ProtocolPairs, _subset

FAR_LEVEL = 1e-2  # 400 different pairs a fold measure down to about this


def score_fixed_model(verifier, index, pairs: ProtocolPairs, protocol: FamilyProtocol, name: str) -> dict:
    """One model on every fold: accuracy at its own threshold and at one chosen on the other folds."""
    distances = _pair_distances(verifier, index, pairs, np.arange(len(index)))
    return _summary(name, "model", distances, pairs, protocol, own_threshold=verifier.threshold,
                    threshold_source=verifier.threshold_source)


@dataclass(frozen=True)
class FoldJob:
    """One fold of one recipe row: train ``recipe`` on the images of the other folds, score the fold's pairs
    (``pairs``: that fold's alone). Self-contained, so that it can run in another process or on another node."""

    recipe: dict
    index: DatasetIndex
    image_folds: np.ndarray
    pairs: ProtocolPairs
    protocol: FamilyProtocol
    name: str
    out: Path
    fold: int
    device: str = "auto"
    cache: Union[bool, CacheSetting] = True
    workers: Optional[int] = None  # training's face-finding processes (how to run, not what): None, its default


#: What a fold job gives back: the distance of each of its pairs and the threshold its model's val chose.
FoldResult = tuple[np.ndarray, float]


def recipe_jobs(recipe: dict, index, image_folds: np.ndarray, pairs: ProtocolPairs, protocol: FamilyProtocol,
                name: str, out: Path, device: str = "auto", cache: Union[bool, CacheSetting] = True) -> list[FoldJob]:
    """The jobs of one recipe row: one per scored fold, each trained on the other folds' families."""
    return [FoldJob(recipe, index, image_folds, _subset(pairs, pairs.folds == fold), protocol, name, out, fold,
                    device, cache) for fold in range(protocol.scored)]


def run_fold(job: FoldJob, *, progress: bool = False, log: Callable[[str], None] = lambda text: None) -> FoldResult:
    """Train the fold's model (unless a finished run is there) and score the fold's pairs with it at the
    threshold its own val split chose."""
    from ..training.run import TrainConfig, train

    run = job.out / "runs" / job.name / f"fold{job.fold}"
    manifest = run.parent / f"fold{job.fold}-train.csv"
    run.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(job.index, np.flatnonzero(job.image_folds != job.fold), manifest)
    if not (run / "model.pt").is_file() or not (run / "done").is_file():
        how = {"device": job.device} if job.workers is None else {"device": job.device, "workers": job.workers}
        settings = {"split": "0.9:0.1:0", "seed": job.protocol.seed, **how, **job.recipe,
                    "pairs": None, "out": str(run), "dataset": "csv", "root": str(job.index.root),
                    "manifest": str(manifest), "group_by": job.protocol.group_by}
        log(f"{job.name}: training fold {job.fold + 1}/{job.protocol.folds} into {run}")
        # An interrupted fold continues from its last epoch (training is seeded per epoch).
        train(TrainConfig.from_dict(settings), resume=(run / "last.pt").is_file(), progress=progress,
              cache=cache_setting(job.cache))
        write_text(run / "done", "trained\n")
    options = FaceOptions(detector=job.recipe.get("detector", "auto"), fallback="whole-image", device=job.device,
                          cache=job.cache, progress=progress)
    verifier = load_verifier(str(run / "model.pt"), options=options)
    distances = _pair_distances(verifier, job.index, job.pairs, np.flatnonzero(job.image_folds == job.fold))
    return distances, verifier.threshold


def recipe_row(jobs: list[FoldJob], results: list[FoldResult], pairs: ProtocolPairs) -> dict:
    """The row of a recipe from its fold jobs' results, scored on all of ``pairs``."""
    first = jobs[0]
    distances = np.full(len(pairs.labels), np.nan)
    for job, (fold_distances, _) in zip(jobs, results):
        distances[pairs.folds == job.fold] = fold_distances
    return _summary(first.name, "recipe", distances, pairs, first.protocol,
                    own_threshold=np.array([threshold for _, threshold in results]),
                    threshold_source="each fold's model: chosen on its own val families", recipe=first.recipe)


def write_manifest(index, rows: np.ndarray, path: Path) -> None:
    """A csv-adapter manifest (path,identity and every attribute column) of ``rows`` of ``index``."""
    columns = sorted(index.attributes)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "identity", *columns])
    for row in rows:
        writer.writerow([index.paths[row], index.identity_names[index.identity_codes[row]],
                         *["" if index.attributes[c][row] is None else index.attributes[c][row] for c in columns]])
    write_text(path, buffer.getvalue())


def _pair_distances(verifier, index, pairs: ProtocolPairs, rows: np.ndarray) -> np.ndarray:
    """The verifier's distance for each pair; every image the pairs use is embedded once."""
    used = np.unique(np.concatenate([pairs.first, pairs.second]))
    used = used[np.isin(used, rows)]
    vectors, result = verifier.embed([str(index.absolute_path(row)) for row in used], on_error="skip")
    if result.errors:
        first = next(iter(result.errors.values()))
        raise InputError(f"{len(result.errors)} images could not be embedded, e.g. {first}")
    position = np.full(len(index), -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    return verifier.distances(vectors[position[pairs.first]], vectors[position[pairs.second]])


def _summary(name: str, kind: str, distances: np.ndarray, pairs: ProtocolPairs, protocol: FamilyProtocol, *,
             own_threshold, threshold_source: str, recipe: Optional[dict] = None) -> dict:
    row: dict = {"name": name, "kind": kind, "threshold_source": threshold_source, "pair_kinds": {}}
    if recipe is not None:
        row["recipe"] = recipe
    for pair_kind in PAIR_KINDS:
        chosen = pairs.kinds == pair_kind
        d, labels, folds = distances[chosen], pairs.labels[chosen], pairs.folds[chosen]
        thresholds = np.broadcast_to(np.asarray(own_threshold, dtype=np.float64), (protocol.scored,))
        own = np.array([accuracy_at(d[folds == f], labels[folds == f], thresholds[f]) for f in range(protocol.scored)])
        entry = {"pairs": {"same": int(labels.sum()), "different": int((labels == 0).sum())},
                 "accuracy": float(own.mean()), "accuracy_std": float(own.std(ddof=1)) if len(own) > 1 else None,
                 "fold_accuracies": own.tolist()}
        if kind == "model":
            folded = kfold_protocol(d, labels, folds, rule=protocol.rule)
            entry["accuracy_folds_threshold"] = folded.mean_accuracy
            entry["accuracy_folds_threshold_std"] = folded.std_accuracy
            entry["fold_thresholds"] = [fold.threshold for fold in folded.folds]
        # Per fold, then averaged: a recipe's folds are different models, whose distances do not pool.
        measured = [separation(d[folds == f], labels[folds == f], far_levels=(FAR_LEVEL,)).to_dict()
                    for f in range(protocol.scored)]
        for key in measured[0]:
            values = [fold[key] for fold in measured if isinstance(fold[key], (int, float))
                      and not isinstance(fold[key], bool) and np.isfinite(fold[key])]
            if not isinstance(measured[0][key], dict):
                entry[key] = float(np.mean(values)) if values else None
        row["pair_kinds"][pair_kind] = entry
    return row
