"""The overlap report's ``report.md``: headline table, threshold rules, subgroups, method notes."""
from __future__ import annotations

from typing import Optional

from .subgroups import MIXED, SUBGROUP_ATTRIBUTES


def percent(value: Optional[float], digits: int = 2) -> str:
    """A share as ``12.34%``, or a dash for none."""
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def number(value: Optional[float], digits: int = 4) -> str:
    """A value to ``digits`` places, or a dash for none."""
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


#: The closing section of every report.md: how each number is made.
_METHOD_LINES = (
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
)


def report_markdown(body: dict) -> str:
    """``report.md``: the headline table, the plots, the subgroup table, how it was measured."""
    split = body["split"]
    notes = body.get("notes", {})
    rows = _headline_rows(body)
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
        *_METHOD_LINES,
    ]
    if notes:
        lines += ["## Notes", "", *(f"- {key}: {text}" for key, text in notes.items()), ""]
    if body.get("command"):
        lines += ["## Reproduce", "", "```", body["command"], "```", ""]
    return "\n".join(lines)


def _headline_rows(body: dict) -> list[tuple[str, str, str]]:
    """The headline table's ``(metric, value, measured on)`` rows."""
    split = body["split"]
    notes = body.get("notes", {})
    rows = [("accuracy at the threshold", percent(body["accuracy"]), split),
            ("BCE loss", number(body["loss"]) if body["loss"] is not None else
             "— (an untrained backbone gives no P(same))", split),
            ("ROC AUC", number(body["auc"]), split),
            ("EER", f"{percent(body['eer'])} (at distance {body['eer_threshold']:.4f})", split)]
    for key in sorted(k for k in body if k.startswith("tar_at_far_")):
        level = key[len("tar_at_far_"):]
        value = percent(body[key]) if body[key] is not None else f"— ({notes.get(key, 'not available')})"
        rows.append((f"TAR at FAR {level}", value, split))
    rows += [("overlap area, Gaussian KDE", number(body["overlap"]) if body["overlap"] is not None else
              f"— ({notes.get('overlap', '')})", split),
             ("overlap area, histogram", number(body["overlap_histogram"]), split),
             (f"threshold ({body['rule']})", number(body["threshold"]),
              f"chosen on {body['threshold_chosen_on']}" if body.get("threshold_chosen_on") else "not chosen here")]
    reference = body.get("verifier_threshold")
    if reference and reference["threshold"] != body["threshold"]:
        whose = "the model's saved" if body.get("trained") else "the backbone's default"
        source = f", {reference['source']}" if reference["source"] else ""
        rows.append((f"accuracy at {whose} threshold {reference['threshold']:.4f}{source}",
                     percent(reference["accuracy"]), split))
    return rows


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
        lines.append(f"| {rule} | {row['threshold']:.4f} | {percent(row['accuracy'])} | "
                     f"{percent(row['false_accept_rate'], 1)} | {percent(row['false_reject_rate'], 1)} |")
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
                     f"{row['n_diff']} | {percent(row['accuracy'], 1)} | {percent(row['false_accept_rate'], 1)} | "
                     f"{percent(row['false_reject_rate'], 1)} | {number(row['overlap'], 3)} |")
    return lines + [""]
