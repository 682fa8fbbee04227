"""The study's measures of an age editor on held-out faces, judged by kface's shipped models, and the contact sheet.

On each held-out face (aligned 150 px chip, true class ``a``):

- reconstruction L1: the editor's output at the face's own class against its input (the editor's size,
  pixels on a 0..1 scale); cycle L1: the face edited to a random other class, then back to ``a``;
- every face edited to each of the 7 other classes (150 px, as ``kface age-edit`` makes them). The shipped
  attribute model judges each edit's class (exact and within one of the target); the shipped Korean face model
  gives the distance between input and edit (the identity distance, in place of the study's LPIPS) and
  whether the two are still called the same person at its threshold, by target distance ``|t - a|``.

The judges' own error is measured beside them: the attribute model on the unedited chips (and on the chips
shrunk to the editor's size and enlarged back, what any edit starts from).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..attributes.shipped import load_shipped_attributes
from ..engines.shipped import shipped_network
from ..models import MODEL_FAMILIES, shipped_threshold
from ..util.outputs import write_json, write_text
from . import AGE_CLASSES
from .data import ChipSet, shrink
from .editor import AgeEditorModel, label_strip, write_png

CLASSES = len(AGE_CLASSES)
SEED = 0


def _l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def _age_scores(probabilities: np.ndarray, truth: np.ndarray) -> dict:
    predicted = probabilities.argmax(axis=1)
    return {"exact": float((predicted == truth).mean()), "within_one": float((np.abs(predicted - truth) <= 1).mean()),
            "count": len(truth)}


def measure_editor(editor: AgeEditorModel, faces: ChipSet, device: str = "auto",
                   detail_modes: tuple[bool, ...] = (True, False), strength: float = 1.0) -> dict:
    """The measures above for ``editor`` on ``faces`` (150 px chips). ``detail_modes``: score the 150 px edits
    made as a difference on the chip (True, the default of ``kface age-edit``) and/or enlarged (False), each
    carried at ``strength`` (``kface age-edit --strength``)."""
    chips, ages = faces.chips, faces.ages.astype(np.int64)
    rng = np.random.default_rng(SEED)
    small = shrink(chips, editor.size)
    reconstruction = editor.edit_chips(small, ages).chips
    others = (ages + rng.integers(1, CLASSES, size=len(ages))) % CLASSES
    there = editor.edit_chips(small, others).chips
    back = editor.edit_chips(there, ages)
    result: dict = {"faces": len(ages), "groups": len(set(faces.groups)), "editor_size": editor.size,
                    "strength": strength,
                    "reconstruction_l1": _l1(reconstruction, small), "cycle_l1": _l1(back.chips, small),
                    "editor_classifier": _age_scores(back.source_probabilities, others)}
    attributes = load_shipped_attributes(device)
    face_network = shipped_network(MODEL_FAMILIES["korean"], device)
    threshold, source = shipped_threshold("korean", device)
    result["judges"] = {"age": "attributes-korean-v4 (shipped)", "identity": f"korean (shipped), threshold "
                        f"{threshold:.4f} ({source})"}
    originals = attributes.chip_probabilities(chips)["age"]
    resized = attributes.chip_probabilities(shrink(shrink(chips, editor.size), chips.shape[1]))["age"]
    result["judge_on_unedited"] = {"original": _age_scores(originals, ages),
                                   "shrunk_and_enlarged": _age_scores(resized, ages)}
    source_vectors = face_network.run(chips)
    rows = np.repeat(np.arange(len(ages)), CLASSES - 1)
    targets = np.concatenate([np.delete(np.arange(CLASSES), age) for age in ages])
    for detail in detail_modes:
        edited = np.concatenate([editor.edit_chips(chips[rows[i:i + 256]], targets[i:i + 256], detail, strength).chips
                                 for i in range(0, len(rows), 256)])
        judged = attributes.chip_probabilities(edited)["age"]
        distance = np.linalg.norm(face_network.run(edited) - source_vectors[rows], axis=1)
        same = distance < threshold
        gap = np.abs(targets - ages[rows])
        by_gap = {str(g): {"edits": int((gap == g).sum()), "same_person": float(same[gap == g].mean()),
                           "identity_distance": float(distance[gap == g].mean()),
                           "age_within_one": float((np.abs(judged[gap == g].argmax(1) - targets[gap == g]) <= 1)
                                                     .mean())}
                  for g in range(1, CLASSES)}
        by_target = {AGE_CLASSES[c]: _age_scores(judged[targets == c], targets[targets == c]) for c in range(CLASSES)}
        result["detail" if detail else "enlarged"] = {
            "edits": len(rows), "age": _age_scores(judged, targets), "age_by_target": by_target,
            "identity_distance": float(distance.mean()), "same_person": float(same.mean()),
            "same_person_within_two": float(same[gap <= 2].mean()), "by_gap": by_gap}
    return result


def contact_sheet(editor: AgeEditorModel, faces: ChipSet, path: os.PathLike, per_class: int = 2,
                  tile: int = 112, detail: bool = True) -> list[str]:
    """A PNG of held-out faces (``per_class`` of each true class, seeded) at every class; returns their paths."""
    rng = np.random.default_rng(SEED)
    picks = [int(i) for c in range(CLASSES) for i in rng.permutation(np.flatnonzero(faces.ages == c))[:per_class]]
    rows = []
    for i in picks:
        edits = editor.edit_chips(np.repeat(faces.chips[i][None], CLASSES, axis=0), np.arange(CLASSES), detail)
        tiles = shrink(np.concatenate([faces.chips[i][None], edits.chips]), tile)
        rows.append(label_strip(list(tiles), [f"{AGE_CLASSES[faces.ages[i]]} (input)", *AGE_CLASSES]))
    write_png(path, np.concatenate(rows, axis=0))
    return [str(faces.paths[i]) for i in picks]


def write_report(result: dict, folder: Path, command: str, sheet: str | None = None) -> None:
    """``metrics.json`` and ``report.md`` of :func:`measure_editor`'s result."""
    write_json(folder / "metrics.json", result)
    write_text(folder / "report.md", report_markdown(result, command, sheet))


def report_markdown(result: dict, command: str, sheet: str | None = None) -> str:
    unedited = result["judge_on_unedited"]
    lines = [f"# Age editor on held-out groups ({result['faces']} faces, {result['groups']} groups)", "",
             f"Made by `{command}`.", "",
             (f"- reconstruction L1 {result['reconstruction_l1']:.4f}, cycle L1 {result['cycle_l1']:.4f} "
              f"({result['editor_size']} px, pixels 0..1)"),
             (f"- the attribute model on the unedited chips: exact {unedited['original']['exact']:.1%}, within one "
              f"{unedited['original']['within_one']:.1%}; shrunk to {result['editor_size']} px and enlarged: exact "
              f"{unedited['shrunk_and_enlarged']['exact']:.1%}, within one "
              f"{unedited['shrunk_and_enlarged']['within_one']:.1%}"),
             f"- judges: {result['judges']['age']}; {result['judges']['identity']}", ""]
    for mode in ("detail", "enlarged"):
        if mode not in result:
            continue
        body = result[mode]
        title = ("150 px edits as a difference on the chip (kface age-edit's default)" if mode == "detail"
                 else "150 px edits enlarged from the editor's output (--no-detail)")
        lines += [f"## {title}", "",
                  (f"{body['edits']} edits: target class exact {body['age']['exact']:.1%}, within one "
                   f"{body['age']['within_one']:.1%}; same person {body['same_person']:.1%} (within two classes of "
                   f"the original: {body['same_person_within_two']:.1%}); mean identity distance "
                   f"{body['identity_distance']:.3f}"), "",
                  "| classes moved | edits | same person | identity distance | age within one |",
                  "|---|---|---|---|---|"]
        for gap, row in body["by_gap"].items():
            lines.append(f"| {gap} | {row['edits']} | {row['same_person']:.1%} | {row['identity_distance']:.3f} | "
                         f"{row['age_within_one']:.1%} |")
        lines += ["", "| target | exact | within one |", "|---|---|---|"]
        for name, row in body["age_by_target"].items():
            lines.append(f"| {name} | {row['exact']:.1%} | {row['within_one']:.1%} |")
        lines.append("")
    if sheet:
        lines += [f"![held-out faces at every class]({sheet})", ""]
    return "\n".join(lines)
