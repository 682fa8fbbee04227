"""Stage 8: the overlap report of one model on one pair file: ``metrics.json``, two plots, ``report.md``.

:func:`overlap_report` follows the study's protocol and never scores a threshold on the pairs that
chose it:

1. up to ``samples`` same-person and ``samples`` different-person pairs are drawn (seeded) from the
   **val** split and from the **test** split, before anything is embedded;
2. every image of both samples is embedded once;
3. the threshold is chosen by ``rule`` on the val sample (:func:`kface.metrics.choose_threshold`);
4. everything reported is measured on the test sample (:func:`kface.metrics.evaluate`), also per
   subgroup where the dataset labels gender, age, lighting, accessory, expression or pose.

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

from ..errors import InputError
from ..outputs import atomic_path, write_json, write_text

log = logging.getLogger("kface")

#: Record attributes that make subgroups, in table order, with the name the table shows.
SUBGROUP_ATTRIBUTES: dict[str, str] = {
    "gender": "gender",
    "age_group": "age group",
    "lighting": "lighting",
    "accessory": "accessory",
    "expression": "expression",
    "camera": "pose (camera)",
}
#: A pair whose two images differ in an attribute falls in this group.
MIXED = "mixed"
AGE_BAND_YEARS = 10
SAME_COLOUR, DIFF_COLOUR, OVERLAP_COLOUR = "#1f77b4", "#d62728", "#7f3c8d"


# --------------------------------------------------------------------------- verifier


def report_verifier(model: Optional[str] = None, *, backbone: str = "dlib-resnet", detector: str = "dlib",
                    fallback: str = "whole-image", device: str = "auto", weights: Optional[str] = None,
                    cache: bool = True, progress: bool = False, max_pixels: Optional[int] = None):
    """The :class:`~kface.api.Verifier` to report on: a trained ``model``, or the untrained ``backbone``.

    Unlike :func:`kface.api.load_verifier`, an untrained backbone without a published threshold is
    accepted (its ``threshold`` is NaN): the report measures one on the val split anyway.
    """
    from ..api import BASE_THRESHOLDS, Verifier, load_verifier
    from ..backbones import get_spec
    from ..embeddings import Embedder

    if model is not None or get_spec(backbone).family in BASE_THRESHOLDS:
        return load_verifier(model, backbone, detector, None, fallback, device, weights=weights, cache=cache,
                             progress=progress, max_pixels=max_pixels)
    embedder = Embedder(backbone, detector=detector, fallback=fallback, device=device, weights=weights,
                        cache=cache, progress=progress, max_pixels=max_pixels)
    return Verifier(embedder, math.nan, "none: this backbone has no published threshold")


# --------------------------------------------------------------------------- subgroups


def _group_value(key: str, value: Any) -> Optional[str]:
    """An attribute value as the group label the table shows (K-Face codes keep their letter)."""
    from ..datasets.kface_layout import CODES

    if value is None:
        return None
    if key == "age_group":
        low = int(value) // AGE_BAND_YEARS * AGE_BAND_YEARS
        return f"{low}-{low + AGE_BAND_YEARS - 1}"
    letters = {code.attribute: code.letter for code in CODES.values()}
    return f"{letters[key]}{value}" if key in letters else str(value)


def load_image_attributes(kind: str, root: Union[str, os.PathLike], options: Optional[dict] = None,
                          progress: bool = False) -> dict[str, dict[str, str]]:
    """``{absolute image path: {attribute: group label}}`` for every image of a dataset that labels any.

    Attributes are those of :data:`SUBGROUP_ATTRIBUTES` (``age`` becomes its ten-year ``age_group``).
    """
    from ..datasets import load_dataset

    index = load_dataset(kind, root, progress=progress, **(options or {}))
    columns = dict(index.attributes)
    if "age" in columns:
        columns["age_group"] = columns.pop("age")
    columns = {key: columns[key] for key in SUBGROUP_ATTRIBUTES if key in columns}
    labelled: dict[str, dict[str, str]] = {}
    for row, path in enumerate(index.paths):
        values = {key: _group_value(key, column[row]) for key, column in columns.items() if column[row] is not None}
        if values:
            labelled[os.path.normpath(os.path.join(index.root, path))] = values
    return labelled


def _attributes_for_pairs(pairs, attributes_dataset: Optional[str], attributes_root: Optional[str],
                          progress: bool) -> tuple[Optional[dict], str]:
    """The image attributes to group pairs by, and where they came from (or why there are none)."""
    if attributes_dataset is not None:
        if attributes_root is None:
            raise InputError("--attributes-dataset needs --attributes-root (the folder that dataset indexes)")
        return load_image_attributes(attributes_dataset, attributes_root, progress=progress), \
            f"the {attributes_dataset} dataset at {attributes_root}"
    dataset = pairs.manifest.get("dataset") if isinstance(pairs.manifest.get("dataset"), dict) else {}
    kind, root = dataset.get("kind"), dataset.get("root")
    if not kind or not root:
        return None, "the pair file has no manifest naming its dataset; pass --attributes-dataset and --attributes-root"
    filters = pairs.manifest.get("filters") or {}
    if not os.path.isdir(root):
        return None, f"the pair manifest's dataset root {root} is not here; pass --attributes-root"
    try:
        return load_image_attributes(kind, root, filters, progress), f"the pair manifest's {kind} dataset at {root}"
    except InputError as error:
        return None, f"could not index the pair manifest's {kind} dataset ({error})"


def pair_groups(paths_a: Sequence[str], paths_b: Sequence[str],
                attributes: dict[str, dict[str, str]]) -> dict[str, np.ndarray]:
    """Each pair's group per attribute: the shared value, ``"mixed"``, or None where an image lacks it.

    Only attributes that at least one pair has are returned (object arrays, one entry per pair).
    """
    a = [attributes.get(os.path.normpath(path), {}) for path in paths_a]
    b = [attributes.get(os.path.normpath(path), {}) for path in paths_b]
    groups = {}
    for key in SUBGROUP_ATTRIBUTES:
        column = np.empty(len(a), dtype=object)
        for i, (left, right) in enumerate(zip(a, b)):
            if key in left and key in right:
                column[i] = left[key] if left[key] == right[key] else MIXED
        if any(value is not None for value in column):
            groups[key] = column
    return groups


def _group_order(value: str) -> tuple:
    """Natural order (S2 before S10, 20-29 before 30-39), ``mixed`` last."""
    digits = "".join(ch if ch.isdigit() else " " for ch in value).split()
    return (value == MIXED, [int(d) for d in digits[:1]], value)


def subgroup_table(distances: np.ndarray, same: np.ndarray, threshold: float,
                   groups: dict[str, np.ndarray]) -> list[dict]:
    """Accuracy, FAR, FRR and overlap per subgroup at ``threshold`` (one row per attribute value).

    ``far``/``frr``/``overlap`` are None where the group lacks the pairs they need (``overlap``:
    two distinct distances of each class).
    """
    from ..metrics import overlap_area

    rows = []
    for key, column in groups.items():
        values = sorted({value for value in column if value is not None}, key=_group_order)
        for value in values:
            member = column == value
            d, s = distances[member], same[member]
            accepted = d <= threshold
            try:
                overlap: Optional[float] = overlap_area(d[s], d[~s], "kde")
            except InputError:
                overlap = None
            rows.append({
                "attribute": key,
                "group": value,
                "n_same": int(s.sum()),
                "n_diff": int((~s).sum()),
                "accuracy": float(np.mean(accepted == s)),
                "false_accept_rate": float(np.mean(accepted[~s])) if (~s).any() else None,
                "false_reject_rate": float(np.mean(~accepted[s])) if s.any() else None,
                "overlap": overlap,
            })
    return rows


# --------------------------------------------------------------------------- the protocol

#: The rules compared side by side in every report that has a val split.
COMPARED_RULES = ("intersection", "max-accuracy", "eer", "far=1e-2")


def compare_rules(val_distances: np.ndarray, val_same: np.ndarray, test_distances: np.ndarray,
                  test_same: np.ndarray, rules: Sequence[str] = COMPARED_RULES) -> list[dict]:
    """Each rule's threshold chosen on val, and the test accuracy, FAR and FRR it gives.

    A rule the val pairs cannot support (``far=X`` with fewer than 1/X negatives) gets a ``note``.
    """
    from ..metrics import choose_threshold

    rows = []
    for rule in rules:
        try:
            chosen = choose_threshold(val_distances, val_same, rule)
        except InputError as error:
            rows.append({"rule": rule, "threshold": None, "accuracy": None, "false_accept_rate": None,
                         "false_reject_rate": None, "note": str(error)})
            continue
        accepted = test_distances <= chosen.value
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
    from ..metrics import sample_per_class

    part = pairs.select(name)
    if len(part) == 0:
        return part, None
    return part, sample_per_class(part.label, samples, seed)


def _score(part, sample, name: str, vectors: np.ndarray, row_of: dict, verifier) -> _ScoredSplit:
    paths_a = [part.abs_path_a[i] for i in sample.indices]
    paths_b = [part.abs_path_b[i] for i in sample.indices]
    distances = np.asarray(verifier.distances(vectors[[row_of[p] for p in paths_a]],
                                              vectors[[row_of[p] for p in paths_b]]), dtype=np.float64)
    same = part.label[sample.indices] == 1
    kept = np.isfinite(distances)
    return _ScoredSplit(name, distances[kept], same[kept], [p for p, k in zip(paths_a, kept) if k],
                        [p for p, k in zip(paths_b, kept) if k], sample, int((~kept).sum()))


def _fallback_threshold(verifier, threshold: Optional[float], val_split: str, reason: str):
    """The threshold to use when none can be chosen on ``val_split``, labelled as such."""
    from ..metrics import Threshold

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
    from .. import __version__
    from ..metrics import choose_threshold, evaluate, parse_rule, parse_samples
    from ..pairs import SPLITS, read_pairs

    samples = parse_samples(samples)
    parsed_rule = parse_rule(rule)
    if split == val_split:
        raise InputError(f"the threshold must be chosen on another split than the one scored ({split})")
    pairs = read_pairs(pairs_file, root)
    present = [name for name in SPLITS if np.any(pairs.split == name)]
    test_part, test_sample = _sample_split(pairs, split, samples, seed)
    if test_sample is None:
        raise InputError(f"{pairs_file}: no {split} pairs to score (the file has {', '.join(present)})")
    val_part, val_sample = _sample_split(pairs, val_split, samples, seed)
    if val_sample is None and threshold is None:
        log.warning("%s has no %s split to choose a threshold on", pairs_file, val_split)

    paths = sorted({*(test_part.abs_path_a[i] for i in test_sample.indices),
                    *(test_part.abs_path_b[i] for i in test_sample.indices)}
                   | ({*(val_part.abs_path_a[i] for i in val_sample.indices),
                       *(val_part.abs_path_b[i] for i in val_sample.indices)} if val_sample else set()))
    vectors, embedded = verifier.embed(paths, on_error="skip")
    row_of = {path: i for i, path in enumerate(paths)}
    test = _score(test_part, test_sample, split, vectors, row_of, verifier)
    val = _score(val_part, val_sample, val_split, vectors, row_of, verifier) if val_sample else None
    notes: dict[str, str] = {}
    if embedded.errors:
        example = next(iter(embedded.errors.values()))
        notes["dropped"] = (f"{len(embedded.errors)} image(s) could not be embedded, e.g. {example}; their pairs "
                            f"are left out ({test.dropped} {split}" + (f", {val.dropped} {val_split}" if val else "")
                            + ")")
    if len(test.same) == 0:
        raise InputError(f"no {split} pair could be scored ({notes.get('dropped', '')})")

    if threshold is not None:
        chosen = _fallback_threshold(verifier, threshold, val_split,
                                     f"the pair file has no {val_split} split" if val is None
                                     else f"the --rule {parsed_rule} was not applied")
    elif val is None:
        chosen = _fallback_threshold(verifier, None, val_split, f"the pair file has no {val_split} split")
    else:
        chosen = choose_threshold(val.distances, val.same, parsed_rule, split=val_split)
    probabilities = None
    if verifier.probability is not None:
        probabilities = np.asarray(verifier.probability(test.distances), dtype=np.float64)
    metrics = evaluate(test.distances, test.same, chosen, probabilities=probabilities, split=split)
    metrics = replace(metrics, samples=samples, seed=seed)
    body = metrics.to_dict()
    body["notes"].update(notes)

    groups, attributes_source = {}, None
    attributes, why = _attributes_for_pairs(pairs, attributes_dataset, attributes_root, progress)
    if attributes:
        groups = pair_groups(test.paths_a, test.paths_b, attributes)
        attributes_source = why
    if not groups:
        body["notes"]["subgroups"] = (why if attributes is None else
                                      f"no subgroup table: {why} labels none of "
                                      f"{', '.join(SUBGROUP_ATTRIBUTES)} for these images")
    reference = None
    if math.isfinite(verifier.threshold):
        reference = {"threshold": float(verifier.threshold), "source": verifier.threshold_source or "",
                     "accuracy": float(np.mean((test.distances <= verifier.threshold) == test.same))}
    manifest = pairs.manifest
    body.update({
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
        "test_sample": test_sample.to_dict() | {"dropped": test.dropped},
        "val_sample": (val_sample.to_dict() | {"dropped": val.dropped}) if val else None,
        "verifier_threshold": reference,
        "detection_stages": embedded.stage_counts(),
        "subgroups_from": attributes_source,
        "subgroups": subgroup_table(test.distances, test.same, chosen.value, groups),
        "rules_compared": compare_rules(val.distances, val.same, test.distances, test.same) if val else [],
        "kface_version": __version__,
        "command": command,
    })
    out = Path(out_dir)
    _plot_distributions(out / "distributions.png", test.distances, test.same, body)
    _plot_roc(out / "roc.png", test.distances, test.same, body)
    write_text(out / "report.md", report_markdown(body))
    write_json(out / "metrics.json", body)
    return body


# --------------------------------------------------------------------------- text


def _percent(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def _number(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def model_title(body: dict) -> str:
    """``dlib-resnet (untrained)`` or ``runs/x/model.pt (on dlib-resnet)``."""
    if body.get("model"):
        return f"{body['model']} (on {body['backbone']})"
    return f"{body['backbone']} (untrained)"


def threshold_sentence(body: dict) -> str:
    """Where the threshold came from, in one sentence."""
    value = f"**{body['threshold']:.4f}**"
    if body.get("threshold_chosen_on"):
        val = body.get("val_sample") or {}
        return (f"Threshold {value} chosen by the `{body['rule']}` rule on the **{body['threshold_chosen_on']}** "
                f"split ({val.get('n_same')} same-person / {val.get('n_diff')} different-person pairs) and "
                f"applied to the **{body['split']}** split.")
    return f"Threshold {value} ({body['rule']}): {body['notes'].get('threshold', 'not chosen on this pair file')}."


def report_markdown(body: dict) -> str:
    """``report.md``: the headline table, the plots, the subgroup table, how it was measured."""
    split = body["split"]
    notes = body.get("notes", {})
    rows = [("accuracy at the threshold", _percent(body["accuracy"]), split),
            ("BCE loss", _number(body["loss"]) if body["loss"] is not None else
             "— (an untrained backbone gives no P(same))", split),
            ("ROC AUC", _number(body["auc"]), split),
            ("EER", f"{_percent(body['eer'])} (at distance {body['eer_threshold']:.4f})", split)]
    for key in sorted(k for k in body if k.startswith("tar_at_far_")):
        level = key[len("tar_at_far_"):]
        value = _percent(body[key]) if body[key] is not None else f"— ({notes.get(key, 'not available')})"
        rows.append((f"TAR at FAR {level}", value, split))
    rows += [("overlap area, Gaussian KDE", _number(body["overlap"]) if body["overlap"] is not None else
              f"— ({notes.get('overlap', '')})", split),
             ("overlap area, histogram", _number(body["overlap_histogram"]), split),
             (f"threshold ({body['rule']})", _number(body["threshold"]),
              f"chosen on {body['threshold_chosen_on']}" if body.get("threshold_chosen_on") else "not chosen here")]
    reference = body.get("verifier_threshold")
    if reference and reference["threshold"] != body["threshold"]:
        whose = "the model's saved" if body.get("trained") else "the backbone's default"
        source = f", {reference['source']}" if reference["source"] else ""
        rows.append((f"accuracy at {whose} threshold {reference['threshold']:.4f}{source}",
                     _percent(reference["accuracy"]), split))
    sample = body["test_sample"]
    lines = [
        f"# Overlap report: {model_title(body)}",
        "",
        f"Pair file `{body['pairs_file']}`; {body['distance']} distance; detector {body['detector']} "
        f"(fallback {body['fallback']}).",
        "",
        threshold_sentence(body) + f" Every number below is measured on the {split} split: "
        f"{sample['n_same']} same-person and {sample['n_diff']} different-person pairs "
        f"({_sample_words(sample)}, seed {body['seed']}).",
        "",
        "| metric | value | measured on |",
        "|---|---|---|",
        *(f"| {name} | {value} | {where} |" for name, value, where in rows),
        "",
        "![distance distributions](distributions.png)",
        "",
        "![ROC](roc.png)",
        "",
        *_rules_markdown(body),
        *_subgroup_markdown(body),
        "## How the numbers are made",
        "",
        "- **Distance**: smaller means more alike; a pair is judged \"same person\" iff distance <= threshold.",
        "- **Overlap area**: the integral of min(f_same, f_diff) of the two distance densities (0 = fully "
        "separated, 1 = identical). The headline is a Gaussian KDE of each class (Scott's bandwidth), "
        "integrated on a fine grid; kernel smoothing leans it slightly high on small samples. Beside it, "
        "a histogram estimate (shared Freedman-Diaconis bins, sum of bin-wise minima), free of any "
        "bandwidth choice; sparse bins lean it slightly low.",
        "- **Threshold rules**: `intersection` (the study's: where the two KDEs cross between the class "
        "medians), `max-accuracy`, `eer` (where false accepts equal false rejects), `far=X` (the largest "
        "threshold with at most X false accepts). The rule runs on the val split, never on the pairs it is "
        "scored on.",
        "- **TAR at FAR X** needs at least 1/X different-person pairs; with fewer it is not reported.",
        "- **BCE loss**: mean binary cross-entropy of a trained model's P(same), clipped to [1e-7, 1 - 1e-7].",
        "",
    ]
    if notes:
        lines += ["## Notes", "", *(f"- {key}: {text}" for key, text in notes.items()), ""]
    if body.get("command"):
        lines += ["## Reproduce", "", "```", body["command"], "```", ""]
    return "\n".join(lines)


def _sample_words(sample: dict) -> str:
    if sample["samples"] == "all":
        return "every pair"
    return f"up to {sample['samples']} per class drawn from {sample['available_same']} / {sample['available_diff']}"


def _rules_markdown(body: dict) -> list[str]:
    rows = body.get("rules_compared") or []
    if not rows:
        return []
    lines = [
        "## The threshold rules side by side",
        "",
        f"Each rule chooses its threshold on the same {body['threshold_chosen_on']} pairs; the accuracy, FAR "
        f"(different-person pairs accepted) and FRR (same-person pairs rejected) are measured on the "
        f"{body['split']} pairs.",
        "",
        "| rule | threshold | accuracy | FAR | FRR |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["threshold"] is None:
            lines.append(f"| {row['rule']} | — | — ({row['note']}) | | |")
            continue
        rule = f"**{row['rule']}** (used above)" if row["rule"] == body["rule"] else row["rule"]
        lines.append(f"| {rule} | {row['threshold']:.4f} | {_percent(row['accuracy'])} | "
                     f"{_percent(row['false_accept_rate'], 1)} | {_percent(row['false_reject_rate'], 1)} |")
    return lines + [""]


def _subgroup_markdown(body: dict) -> list[str]:
    rows = body.get("subgroups") or []
    if not rows:
        return []
    lines = [
        "## By subgroup",
        "",
        f"The same {body['split']} pairs and threshold, grouped by the labels of {body['subgroups_from']}. A pair "
        f"belongs to a group when both its images share the value; pairs of two different values are "
        f"`{MIXED}` (for a person's own attributes only different-person pairs can be mixed). FAR: share "
        f"of different-person pairs accepted; FRR: share of same-person pairs rejected. Small groups give "
        f"noisy numbers: read them with their counts.",
        "",
        "| attribute | group | same pairs | different pairs | accuracy | FAR | FRR | overlap (KDE) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {SUBGROUP_ATTRIBUTES[row['attribute']]} | {row['group']} | {row['n_same']} | "
                     f"{row['n_diff']} | {_percent(row['accuracy'], 1)} | {_percent(row['false_accept_rate'], 1)} | "
                     f"{_percent(row['false_reject_rate'], 1)} | {_number(row['overlap'], 3)} |")
    return lines + [""]


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    with atomic_path(path, suffix=".png") as temp:
        figure.savefig(temp, dpi=120)
    _pyplot().close(figure)


def _plot_distributions(path: Path, distances: np.ndarray, same: np.ndarray, body: dict) -> None:
    from ..metrics import histogram_densities, kde_densities

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.8))
    d_same, d_diff = distances[same], distances[~same]
    histograms = histogram_densities(d_same, d_diff)
    for values, colour in ((histograms.same, SAME_COLOUR), (histograms.diff, DIFF_COLOUR)):
        axis.stairs(values, histograms.edges, color=colour, alpha=0.25, fill=True)
    try:
        densities = kde_densities(d_same, d_diff)
    except InputError:
        densities = None  # a class without spread has no KDE; the histograms still show it
    if densities is not None:
        axis.plot(densities.x, densities.same, color=SAME_COLOUR, linewidth=2,
                  label=f"same person (n={body['n_same']})")
        axis.plot(densities.x, densities.diff, color=DIFF_COLOUR, linewidth=2,
                  label=f"different people (n={body['n_diff']})")
        axis.fill_between(densities.x, np.minimum(densities.same, densities.diff), color=OVERLAP_COLOUR,
                          alpha=0.45, hatch="//", edgecolor="white", linewidth=0,
                          label=f"overlap {_number(body['overlap'], 3)} (KDE; histogram "
                                f"{body['overlap_histogram']:.3f})")
        # The KDE grid runs six bandwidths past the data; show only where either density is visible.
        higher = np.maximum(densities.same, densities.diff)
        visible = densities.x[higher > 1e-3 * higher.max()]
        axis.set_xlim(min(visible[0], distances.min()), max(visible[-1], distances.max()))
    where = f"on {body['threshold_chosen_on']}" if body.get("threshold_chosen_on") else "not chosen here"
    axis.axvline(body["threshold"], color="black", linestyle="--", linewidth=1.5,
                 label=f"threshold {body['threshold']:.3f} ({body['rule']}, {where}): "
                       f"accuracy {_percent(body['accuracy'], 1)}")
    axis.set_xlabel(f"{body['distance']} distance (smaller = more alike)")
    axis.set_ylabel("density")
    # Head room above the peaks keeps the legend off the curves.
    axis.set_ylim(0, 1.35 * axis.get_ylim()[1])
    axis.set_title(f"{model_title(body)}: {body['split']} split of {Path(body['pairs_file']).name}", fontsize=10)
    axis.legend(loc="upper right", fontsize=8, framealpha=0.9)
    figure.tight_layout()
    _save(figure, path)


def _plot_roc(path: Path, distances: np.ndarray, same: np.ndarray, body: dict) -> None:
    from ..metrics import roc

    plt = _pyplot()
    curve = roc(distances, same)
    far, tar = curve.false_accept_rate, curve.true_accept_rate
    operating_far = float(np.mean(distances[~same] <= body["threshold"]))
    operating_tar = float(np.mean(distances[same] <= body["threshold"]))
    figure, (linear, logarithmic) = plt.subplots(1, 2, figsize=(10, 4.6))
    linear.plot(far, tar, color=SAME_COLOUR, linewidth=2, label=f"AUC {body['auc']:.4f}")
    linear.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    linear.plot([body["eer"]], [1 - body["eer"]], "o", color=DIFF_COLOUR, label=f"EER {_percent(body['eer'])}")
    linear.plot([operating_far], [operating_tar], "s", color="black",
                label=f"threshold {body['threshold']:.3f}: FAR {_percent(operating_far, 1)}, "
                      f"TAR {_percent(operating_tar, 1)}")
    linear.set_xlim(-0.01, 1.01)
    linear.set_ylim(-0.01, 1.01)
    linear.set_xlabel("false accept rate")
    linear.set_ylabel("true accept rate")
    linear.set_title("ROC", fontsize=10)
    linear.legend(loc="lower right", fontsize=8)
    # On a log axis FAR = 0 cannot be drawn; the smallest non-zero FAR here is 1 / different-person pairs.
    floor = 1 / max(body["n_diff"], 1)
    shown = far > 0
    logarithmic.step(far[shown], tar[shown], where="post", color=SAME_COLOUR, linewidth=2)
    for key in sorted(k for k in body if k.startswith("tar_at_far_")):
        level = float(key[len("tar_at_far_"):])
        if body[key] is not None:
            logarithmic.plot([level], [body[key]], "o", color=DIFF_COLOUR,
                             label=f"TAR {_percent(body[key], 1)} at FAR {key[len('tar_at_far_'):]}")
        else:
            logarithmic.axvline(level, color="grey", linestyle=":", linewidth=1,
                                label=f"FAR {key[len('tar_at_far_'):]}: too few different-person pairs")
    logarithmic.set_xscale("log")
    logarithmic.set_xlim(min(floor, 1e-3) / 2, 1)
    logarithmic.set_ylim(-0.01, 1.01)
    logarithmic.set_xlabel("false accept rate (log)")
    logarithmic.set_ylabel("true accept rate")
    logarithmic.set_title(f"low-FAR end (smallest measurable FAR 1/{body['n_diff']})", fontsize=10)
    logarithmic.legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{model_title(body)}: {body['split']} split of {Path(body['pairs_file']).name}", fontsize=10)
    figure.tight_layout()
    _save(figure, path)


def save_report_threshold(model: Union[str, os.PathLike], body: dict) -> dict:
    """Write the report's threshold into the model checkpoint ``model``, so ``kface verify`` uses it.

    Only a threshold chosen on a val split is saved; returns the stored ``{value, rule, split, note}``.
    """
    from ..training.checkpoints import save_threshold

    if not body.get("threshold_chosen_on"):
        raise InputError("--save-threshold saves a threshold chosen on a val split; this report's was not "
                         f"({body['notes'].get('threshold', body['rule'])})")
    val = body.get("val_sample") or {}
    note = (f"chosen by kface overlap-report on {body['pairs_file']} ({val.get('n_same')} same-person / "
            f"{val.get('n_diff')} different-person {body['threshold_chosen_on']} pairs, seed {body['seed']})")
    return save_threshold(model, {"value": body["threshold"], "rule": body["rule"],
                                  "split": body["threshold_chosen_on"], "note": note})
