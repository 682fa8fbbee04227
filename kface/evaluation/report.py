"""Stage 8: the overlap report of one model on one pair file: ``metrics.json``, two plots, ``report.md``.

:func:`overlap_report` follows the study's protocol and never scores a threshold on the pairs that
chose it:

1. up to ``samples`` same-person and ``samples`` different-person pairs are drawn (seeded) from the
   **val** split and from the **test** split, before anything is embedded;
2. every image of both samples is embedded once;
3. the threshold is chosen by ``rule`` on the val sample and everything reported is measured on the
   test sample (:func:`kface.metrics.select_and_score`), also per subgroup where the dataset labels gender, age,
   lighting, accessory, expression or pose.

A pair file without a val split cannot choose a threshold: the report then uses ``threshold`` (the
``--threshold`` option) or the verifier's own threshold, and says so in every file it writes.

The folder holds ``metrics.json`` (flat keys, see :func:`overlap_report`), ``distributions.png`` (both
densities, overlap shaded, threshold line), ``roc.png`` (linear and log-FAR ROC) and ``report.md``.
Every file is written atomically; matplotlib (Agg backend) is imported only to draw.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import __version__
from ..api import BASE_THRESHOLDS, FaceOptions, Verifier, load_verifier
from ..backbones import DEFAULT_BACKBONE, get_spec
from ..distances import Distance
from ..embeddings.embedder import Embedder
from ..errors import InputError
from ..metrics import (
    Threshold,
    choose_threshold,
    evaluate,
    parse_rule,
    parse_samples,
    sample_per_class,
    select_and_score,
)
from ..pairs import SPLITS, read_pairs
from ..reporting.markdown import report_markdown
from ..reporting.plots import plot_distributions, plot_roc
from ..reporting.subgroups import SUBGROUP_ATTRIBUTES, attributes_for_pairs, pair_groups, subgroup_table
from ..training.checkpoints import save_threshold
from ..util.cache import CacheSetting
from ..util.outputs import write_json, write_text
from .scoring import measure_pairs

log = logging.getLogger("kface")

__all__ = ["COMPARED_RULES", "check_save_threshold", "compare_rules", "overlap_report", "pair_groups",
           "report_verifier", "save_report_threshold", "subgroup_table"]


# --------------------------------------------------------------------------- verifier


def report_verifier(model: Optional[str] = None, *, backbone: str = DEFAULT_BACKBONE, detector: str = "dlib",
                    fallback: str = "whole-image", device: str = "auto", weights: Optional[str] = None,
                    cache: Union[bool, CacheSetting] = True, progress: bool = False, max_pixels: Optional[int] = None):
    """The :class:`~kface.api.Verifier` to report on: a trained ``model``, or the untrained ``backbone``.

    Unlike :func:`kface.api.load_verifier`, an untrained backbone without a published threshold is
    accepted (its ``threshold`` is NaN): the report measures one on the val split anyway.
    """
    if model is not None or get_spec(backbone).family in BASE_THRESHOLDS:
        options = FaceOptions(detector=detector, fallback=fallback, device=device, cache=cache, progress=progress,
                              max_pixels=max_pixels)
        return load_verifier(model, backbone=backbone, weights=weights, options=options)
    embedder = Embedder(backbone, detector=detector, fallback=fallback, device=device, weights=weights,
                        cache=cache, progress=progress, max_pixels=max_pixels)
    return Verifier(embedder, math.nan, "none: this backbone has no published threshold")


# --------------------------------------------------------------------------- the protocol

#: The rules compared side by side in every report that has a val split.
COMPARED_RULES = ("intersection", "max-accuracy", "eer", "far=1e-2")


def compare_rules(val_distances: np.ndarray, val_same: np.ndarray, test_distances: np.ndarray,
                  test_same: np.ndarray, rules: Sequence[str] = COMPARED_RULES) -> list[dict]:
    """Each rule's threshold chosen on val, and the test accuracy, FAR and FRR it gives.

    A rule the val pairs cannot support (``far=X`` with fewer than 1/X negatives) gets a ``note``.
    """
    rows = []
    for rule in rules:
        try:
            chosen = choose_threshold(val_distances, val_same, rule)
        except InputError as error:
            rows.append({"rule": rule, "threshold": None, "accuracy": None, "false_accept_rate": None,
                         "false_reject_rate": None, "note": str(error)})
            continue
        accepted = Distance.is_same(test_distances, chosen.value)
        rows.append({"rule": rule, "threshold": chosen.value, "accuracy": float(np.mean(accepted == test_same)),
                     "false_accept_rate": float(np.mean(accepted[~test_same])),
                     "false_reject_rate": float(np.mean(~accepted[test_same])), "note": chosen.note})
    return rows


@dataclass
class _ScoredSplit:
    """One split's sampled pairs with their distances (pairs whose images failed are dropped)."""

    name: str
    distances: np.ndarray
    same: np.ndarray
    paths_a: list[str]
    paths_b: list[str]
    sample: Any  # kface.metrics.Sample
    dropped: int


def _sample_split(pairs, name: str, samples, seed: int):
    part = pairs.select(name)
    if len(part) == 0:
        return part, None
    return part, sample_per_class(part.label, samples, seed)


def _measure_splits(pairs, pairs_file, split: str, val_split: str, samples, seed: int, verifier):
    """The scored test split, the scored val split (None without one) and the embedding result.

    Both samples are drawn before anything is embedded; their images are embedded together, once each.
    """
    test_part, test_sample = _sample_split(pairs, split, samples, seed)
    if test_sample is None:
        present = [name for name in SPLITS if np.any(pairs.split == name)]
        raise InputError(f"{pairs_file}: no {split} pairs to score (the file has {', '.join(present)})")
    val_part, val_sample = _sample_split(pairs, val_split, samples, seed)
    drawn = [(split, test_part, test_sample)] + ([(val_split, val_part, val_sample)] if val_sample else [])
    paths_a = [part.abs_path_a[i] for _, part, sample in drawn for i in sample.indices]
    paths_b = [part.abs_path_b[i] for _, part, sample in drawn for i in sample.indices]
    measured = measure_pairs(verifier, paths_a, paths_b)
    scored, start = [], 0
    for name, part, sample in drawn:
        stop = start + len(sample.indices)
        distances = measured.distances[start:stop]
        kept = np.isfinite(distances)
        same = part.label[sample.indices] == 1
        scored.append(_ScoredSplit(name, distances[kept], same[kept],
                                   [p for p, k in zip(paths_a[start:stop], kept) if k],
                                   [p for p, k in zip(paths_b[start:stop], kept) if k], sample, int((~kept).sum())))
        start = stop
    return scored[0], (scored[1] if len(scored) > 1 else None), measured.result


def _fallback_threshold(verifier, threshold: Optional[float], val_split: str, reason: str):
    """The threshold to use when none can be chosen on ``val_split``, labelled as such."""
    if threshold is not None:
        return Threshold(float(threshold), "fixed", None, f"given with --threshold ({reason})")
    if not math.isfinite(verifier.threshold):
        raise InputError(f"{reason}, and the backbone has no threshold of its own: pass --threshold T, "
                         f"or make the pair file with a {val_split} split")
    whose = "the model's own threshold" if verifier.model_path else "the backbone's default threshold"
    source = f" ({verifier.threshold_source})" if verifier.threshold_source else ""
    return Threshold(float(verifier.threshold), "verifier default", None,
                     f"{reason}: used {whose}{source}, not one chosen on this pair file")


def overlap_report(pairs_file: Union[str, os.PathLike], verifier, *, split: str = "test",
                   val_split: str = "val", rule: str = "intersection", samples: Union[int, str] = 400,
                   seed: int = 0, out_dir: Union[str, os.PathLike], root: Union[str, os.PathLike, None] = None,
                   threshold: Optional[float] = None, attributes_dataset: Optional[str] = None,
                   attributes_root: Optional[str] = None, command: Optional[str] = None,
                   progress: bool = False) -> dict:
    """Choose a threshold on ``val_split``, score ``split``, and write the report folder ``out_dir``.

    :param pairs_file: a pair CSV (with its manifest beside it, when there is one).
    :param verifier: a :class:`~kface.api.Verifier` (see :func:`report_verifier`); a trained model's
        ``probability`` gives the BCE loss, a raw backbone has none.
    :param rule: ``intersection`` (the study's), ``max-accuracy``, ``eer`` or ``far=X``.
    :param samples: pairs per class drawn from each split (default 400, as in the study), or ``"all"``.
    :param seed: seed of both draws; recorded.
    :param threshold: use this threshold instead of choosing one (rule ``fixed``).
    :param attributes_dataset: dataset kind whose labels group the pairs (default: the pair manifest's).
    :param attributes_root: that dataset's root.
    :param command: the command line to record in report.md.
    :return: the body of ``metrics.json``: :meth:`kface.metrics.Metrics.to_dict` keys (accuracy, loss,
        auc, eer, eer_threshold, tar_at_far_*, overlap, overlap_histogram, threshold, rule,
        threshold_chosen_on, n_same, n_diff, split, samples, seed, notes) plus the model, the pair
        file, the val sample, the verifier's own threshold and its accuracy, and ``subgroups``.
    """
    samples = parse_samples(samples)
    parsed_rule = parse_rule(rule)
    if split == val_split:
        raise InputError(f"the threshold must be chosen on another split than the one scored ({split})")
    pairs = read_pairs(pairs_file, root)
    if threshold is None and not np.any(pairs.split == val_split):
        log.warning("%s has no %s split to choose a threshold on", pairs_file, val_split)
    test, val, embedded = _measure_splits(pairs, pairs_file, split, val_split, samples, seed, verifier)
    notes: dict[str, str] = {}
    if embedded.errors:
        example = next(iter(embedded.errors.values()))
        notes["dropped"] = (f"{len(embedded.errors)} image(s) could not be embedded, e.g. {example}; their pairs "
                            f"are left out ({test.dropped} {split}" + (f", {val.dropped} {val_split}" if val else "")
                            + ")")
    if len(test.same) == 0:
        raise InputError(f"no {split} pair could be scored ({notes.get('dropped', '')})")
    metrics = _score_test(test, val, verifier, parsed_rule, threshold, split, val_split)
    body = replace(metrics, samples=samples, seed=seed).to_dict()
    body["notes"].update(notes)
    groups, attributes_source = _subgroups(body, pairs, test, attributes_dataset, attributes_root, progress)
    body.update(_context(pairs_file, pairs, verifier, test, val))
    body.update({
        "detection_stages": embedded.stage_counts(),
        "subgroups_from": attributes_source,
        "subgroups": subgroup_table(test.distances, test.same, metrics.threshold.value, groups),
        "rules_compared": compare_rules(val.distances, val.same, test.distances, test.same) if val else [],
        "kface_version": _version(),
        "command": command,
    })
    _write_folder(Path(out_dir), test, body)
    return body


def _write_folder(out: Path, test: _ScoredSplit, body: dict) -> None:
    """Both plots, ``report.md`` and ``metrics.json``, each written atomically."""
    plot_distributions(out / "distributions.png", test.distances, test.same, body)
    plot_roc(out / "roc.png", test.distances, test.same, body)
    write_text(out / "report.md", report_markdown(body))
    write_json(out / "metrics.json", body)


def _version() -> str:
    return __version__


def _score_test(test: _ScoredSplit, val: Optional[_ScoredSplit], verifier, rule, threshold: Optional[float],
                split: str, val_split: str):
    """The test split's :class:`~kface.metrics.Metrics`: threshold chosen on val, or the fallback one."""
    probabilities = None
    if verifier.probability is not None:
        probabilities = np.asarray(verifier.probability(test.distances), dtype=np.float64)
    if threshold is None and val is not None:
        # The pairs were sampled per class before embedding, so the protocol takes them whole.
        return select_and_score(val.distances, val.same, test.distances, test.same, rule, samples="all",
                                seed=test.sample.seed, test_probabilities=probabilities, val_split=val_split,
                                test_split=split)
    if threshold is not None:
        chosen = _fallback_threshold(verifier, threshold, val_split,
                                     f"the pair file has no {val_split} split" if val is None
                                     else f"the --rule {rule} was not applied")
    else:
        chosen = _fallback_threshold(verifier, None, val_split, f"the pair file has no {val_split} split")
    return evaluate(test.distances, test.same, chosen, probabilities=probabilities, split=split)


def _subgroups(body: dict, pairs, test: _ScoredSplit, attributes_dataset: Optional[str],
               attributes_root: Optional[str], progress: bool) -> tuple[dict, Optional[str]]:
    """Each test pair's group per attribute and where the labels came from; a note in ``body`` when none."""
    groups, attributes_source = {}, None
    attributes, why = attributes_for_pairs(pairs, attributes_dataset, attributes_root, progress)
    if attributes:
        groups = pair_groups(test.paths_a, test.paths_b, attributes)
        attributes_source = why
    if not groups:
        body["notes"]["subgroups"] = (why if attributes is None else
                                      f"no subgroup table: {why} labels none of "
                                      f"{', '.join(SUBGROUP_ATTRIBUTES)} for these images")
    return groups, attributes_source


def _context(pairs_file, pairs, verifier, test: _ScoredSplit, val: Optional[_ScoredSplit]) -> dict:
    """What was measured with what: model, distance, detector, pair file, both samples, the verifier's threshold."""
    reference = None
    if math.isfinite(verifier.threshold):
        accepted = Distance.is_same(test.distances, verifier.threshold)
        reference = {"threshold": float(verifier.threshold), "source": verifier.threshold_source or "",
                     "accuracy": float(np.mean(accepted == test.same))}
    manifest = pairs.manifest
    return {
        "model": str(verifier.model_path) if verifier.model_path else None,
        "backbone": verifier.embedder.spec.name,
        "trained": verifier.model_path is not None,
        "distance": verifier.distance.name,
        "detector": verifier.embedder.settings.detector,
        "fallback": verifier.embedder.settings.fallback,
        "pairs_file": str(pairs_file),
        "pairs_root": str(pairs.root),
        "pairs_manifest": {key: manifest.get(key) for key in ("ratio", "seed", "pairs", "images_per_identity",
                                                              "hard_negatives", "counts") if key in manifest}
                          | ({"dataset": manifest["dataset"].get("kind")} if isinstance(manifest.get("dataset"), dict)
                             else {}),
        "test_sample": test.sample.to_dict() | {"dropped": test.dropped},
        "val_sample": (val.sample.to_dict() | {"dropped": val.dropped}) if val else None,
        "verifier_threshold": reference,
    }


def check_save_threshold(model: Optional[Union[str, os.PathLike]], threshold: Optional[float]) -> None:
    """Refuse, before any scoring, a --save-threshold that has no trained model to write into or no val choice."""
    if not model:
        raise InputError("--save-threshold writes into a trained model: give --model runs/NAME/model.pt")
    if threshold is not None:
        raise InputError("--save-threshold saves a threshold chosen on val; it cannot be combined with --threshold")


def save_report_threshold(model: Union[str, os.PathLike], body: dict) -> dict:
    """Write the report's threshold into the model checkpoint ``model``, so ``kface verify`` uses it.

    Only a threshold chosen on a val split is saved; returns the stored ``{value, rule, split, note}``.
    """
    if not body.get("threshold_chosen_on"):
        raise InputError("--save-threshold saves a threshold chosen on a val split; this report's was not "
                         f"({body['notes'].get('threshold', body['rule'])})")
    val = body.get("val_sample") or {}
    note = (f"chosen by kface overlap-report on {body['pairs_file']} ({val.get('n_same')} same-person / "
            f"{val.get('n_diff')} different-person {body['threshold_chosen_on']} pairs, seed {body['seed']})")
    return save_threshold(model, {"value": body["threshold"], "rule": body["rule"],
                                  "split": body["threshold_chosen_on"], "note": note})
