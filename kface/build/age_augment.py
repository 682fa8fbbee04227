"""The age-editing study's purpose, measured: edited children and elderly added to the Korean models' training.

    python -m kface.build.age_augment make --root ../shared/data/korean_family
        writes runs/age-augment/data/: a copy of the dataset's layout (its images linked, not copied) whose
        identities.csv holds every row of the original and one more per training photo of the middle age
        classes (13-19 .. 46-55): the photo with its face edited by the shipped age editor to a child or an
        elderly class at most three classes away (drawn with the seed; rows name their source in
        ``edited_from``). Held-out groups get no edits. Resumable: edits already written are kept.
    python -m kface.build.age_augment faces --root ../shared/data/korean_family
        trains the shipped face recipe twice, on the training groups without and with the edits (same seed),
        and scores both on the held-out groups (the family protocol, plus the cells where children's errors
        lie): reports/age-augment/faces.{json,md}.

The attribute model's side runs its candidate build on the augmented folder (docs/age-editing.md says how);
the family protocol's side is ``kface benchmark families`` on it (rows with ``edited_from`` only ever train).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from ..ageedit import AGE_CLASSES, AGE_EDGES
from ..ageedit.editor import CARD_FILE as EDITOR_CARD
from ..ageedit.editor import AgeEditorModel, age_edit, write_png
from ..api import FaceOptions, load_verifier
from ..datasets import EDITED_COLUMN
from ..errors import KfaceError
from ..evaluation.families import FamilyProtocol, family_folds, protocol_pairs
from ..evaluation.heldout import HELDOUT_FILE, korean_split
from ..metrics import accuracy_at, auc, eer, tar_at_far
from ..util.hashing import file_sha256
from ..util.outputs import write_json, write_text
from .korean import train_korean

OUT_DIR = Path("runs") / "age-augment"
REPORT_DIR = Path("reports") / "age-augment"
SEED = 0
#: The dataset's class letters, in AGE_CLASSES order.
LETTERS = "abcdefgh"
#: Children and elderly: the classes edits are made to.
TARGETS = (0, 1, 6, 7)
#: The middle classes edits are made from (13-19, 20-30, 31-45, 46-55).
SOURCES = (2, 3, 4, 5)
#: The furthest an edit moves a face: the shipped editor's edits of four or more classes are rarely judged
#: near their target (docs/age-editing.md).
MAX_MOVE = 3
#: The false accept rate whose threshold scores the children's cells (the same for every model).
CELL_FAR = 1e-2
MAKE_COMMAND = "python -m kface.build.age_augment make --root ../shared/data/korean_family"
FACES_COMMAND = "python -m kface.build.age_augment faces --root ../shared/data/korean_family"


def class_years(target: int) -> tuple[int, int, int]:
    """(lowest, highest, middle) age in years of class ``target`` as the dataset labels it (67+ ends at 80)."""
    low = AGE_EDGES[target]
    high = AGE_EDGES[target + 1] - 1 if target + 1 < len(AGE_EDGES) else 80
    return low, high, (low + high) // 2


def edit_plan(classes: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Each photo's target class (-1: not edited): photos of :data:`SOURCES` get one of :data:`TARGETS` at
    most :data:`MAX_MOVE` classes away, drawn uniformly with ``seed``."""
    rng = np.random.default_rng(seed)
    plan = np.full(len(classes), -1, dtype=np.int64)
    for row, source in enumerate(classes):
        if source in SOURCES:
            allowed = [t for t in TARGETS if abs(t - source) <= MAX_MOVE]
            plan[row] = allowed[rng.integers(len(allowed))]
    return plan


def _read_rows(root: Path) -> tuple[list[str], list[dict]]:
    with open(root / "identities.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def make(root: Path, out: Path = OUT_DIR, seed: int = SEED, device: str = "auto") -> dict:
    """Write the augmented dataset folder ``out/data`` (see the module's text); return its summary."""
    root = Path(root).resolve()
    data = out / "data"
    (data / "edited").mkdir(parents=True, exist_ok=True)
    images = data / "images"
    if not images.exists():
        os.symlink((root / "images").resolve(), images, target_is_directory=True)
    columns, rows = _read_rows(root)
    if EDITED_COLUMN in columns:
        raise KfaceError(f"{root} already holds edited rows ({EDITED_COLUMN!r}); give the original dataset")
    by_path = {row["path"]: row for row in rows}
    training, _ = korean_split(root)
    classes = np.array([LETTERS.index(value) for value in training.attributes["age_class"]])
    plan = edit_plan(classes, seed)
    editor = AgeEditorModel(device=device)
    added, failed = [], []
    chosen = np.flatnonzero(plan >= 0)
    for done, row in enumerate(chosen):
        if done % 250 == 0:
            print(f"age edits: {done}/{len(chosen)}", flush=True)  # long: read in a background run's log
        source = training.paths[row]
        target = int(plan[row])
        relative = f"edited/{Path(source).stem}_to_{AGE_CLASSES[target].replace('+', 'plus')}.png"
        if not (data / relative).is_file():
            try:
                write_png(data / relative, age_edit(root / source, target, editor=editor, device=device).image)
            except (KfaceError, OSError, ValueError) as exc:
                failed.append({"path": source, "target": AGE_CLASSES[target], "error": str(exc)})
                continue
        low, high, middle = class_years(target)
        added.append({**by_path[source], "path": relative, "age_class": LETTERS[target], "age_min": low,
                      "age_max": high, "age": middle, EDITED_COLUMN: source})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*columns, EDITED_COLUMN], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{**row, EDITED_COLUMN: ""} for row in rows] + added)
    write_text(data / "identities.csv", buffer.getvalue())
    summary = {"made_by": MAKE_COMMAND, "source": str(root.name), "seed": seed,
               "editor": {"card": EDITOR_CARD.name, "sha256": json.loads(EDITOR_CARD.read_text())["sha256"]},
               "held_out_families_sha256": file_sha256(HELDOUT_FILE), "rule": (
                   f"one edit per training photo of classes {', '.join(AGE_CLASSES[c] for c in SOURCES)}, to a "
                   f"class of {', '.join(AGE_CLASSES[c] for c in TARGETS)} at most {MAX_MOVE} classes away, "
                   f"uniformly"),
               "edits": len(added), "failed": failed,
               "by_target": {AGE_CLASSES[t]: int(sum(row["age_class"] == LETTERS[t] for row in added))
                             for t in TARGETS},
               "training_photos_by_class": {AGE_CLASSES[c]: int((classes == c).sum()) for c in range(len(LETTERS))}}
    write_json(data / "augment.json", summary)
    return summary


def _trained(root: Path, run: Path, device: str) -> Path:
    """The shipped face recipe trained on ``root``'s training groups into ``run`` (kept once finished)."""
    if not (run / "done").is_file():
        train_korean(root, run=run, device=device)
        write_text(run / "done", "trained\n")
    return run / "model.pt"


def _kind_figures(distances: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    reference = tar_at_far(distances, labels, CELL_FAR)
    return {"pairs": len(labels), "accuracy_at_own_threshold": accuracy_at(distances, labels, threshold),
            "auc": auc(distances, labels), "eer": eer(distances, labels).rate,
            f"tar_at_far_{CELL_FAR:g}": reference.tar, "far_threshold": reference.threshold}


def heldout_cells(verifier, index, pairs) -> dict:
    """Both pair kinds' figures on the held-out pairs, and the cells where children's errors lie: same-person
    pairs across ages whose younger photo is 0-6 or 7-12 (accepted) and same-age hard strangers aged 0-6 or 7-12
    (told apart), at the model's own threshold and at the kind's FAR 1e-2 threshold."""
    vectors, _ = verifier.embed([str(index.absolute_path(row)) for row in range(len(index))])
    distances = verifier.distances(vectors[pairs.first], vectors[pairs.second])
    classes = np.array([LETTERS.index(value) for value in index.attributes["age_class"]])
    younger = np.minimum(classes[pairs.first], classes[pairs.second])
    result = {}
    for kind in ("cross-age", "same-age-hard"):
        chosen = pairs.kinds == kind
        figures = _kind_figures(distances[chosen], pairs.labels[chosen], verifier.threshold)
        wanted = 1 if kind == "cross-age" else 0
        for child in (0, 1):
            cell = chosen & (younger == child) & (pairs.labels == wanted)
            right = {}
            for name, threshold in (("own_threshold", verifier.threshold), ("far_threshold", figures["far_threshold"])):
                accepted = distances[cell] <= threshold
                right[name] = float((accepted if wanted else ~accepted).mean()) if cell.any() else None
            figures[f"{AGE_CLASSES[child]} {'same person accepted' if wanted else 'strangers told apart'}"] = {
                "pairs": int(cell.sum()), "right": right}
        result[kind] = figures
    return result


def faces(root: Path, out: Path = OUT_DIR, device: str = "auto") -> dict:
    """Train the face recipe without and with the edits; score both on the held-out groups (see the module)."""
    data = out / "data"
    if not (data / "identities.csv").is_file():
        raise KfaceError(f"{data} holds no augmented dataset; run the make step first")
    models = {"without edits": _trained(root, out / "korean-base", device),
              "with edits": _trained(data, out / "korean-edited", device)}
    _, heldout = korean_split(root)
    protocol = FamilyProtocol()
    pairs = protocol_pairs(heldout, family_folds(heldout, protocol), protocol)
    options = FaceOptions(detector="auto", fallback="whole-image", device=device)
    rows = {}
    for name, model in models.items():
        verifier = load_verifier(str(model), options=options)
        rows[name] = {"model": str(model), "threshold": verifier.threshold, **heldout_cells(verifier, heldout, pairs)}
    augment = json.loads((data / "augment.json").read_text(encoding="utf-8"))
    result = {"made_by": FACES_COMMAND, "data": {key: augment[key] for key in ("rule", "edits", "by_target", "seed")},
              "heldout": {"images": len(heldout), "groups": len(set(heldout.attributes["family"])),
                          "pairs": len(pairs.labels), "protocol": "the family protocol's pairs of the held-out groups "
                          "(5 folds pooled, 400 + 400 of each kind per fold, seed 0)"},
              "rows": rows}
    write_json(REPORT_DIR / "faces.json", result)
    write_text(REPORT_DIR / "faces.md", faces_markdown(result))
    return result


def faces_markdown(result: dict) -> str:
    """The held-out table of :func:`faces`."""
    lines = [f"# Edited children and elderly in the face model's identity batches ({result['heldout']['images']} "
             f"held-out faces, {result['heldout']['groups']} groups)", "", f"Made by `{result['made_by']}`. Edits: "
             f"{result['data']['edits']} ({result['data']['rule']}; seed {result['data']['seed']}).", "",
             "| training | kind | accuracy (own threshold) | AUC | EER | TAR@FAR=1e-2 | 0-6 (own / FAR 1e-2) | "
             "7-12 (own / FAR 1e-2) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["rows"].items():
        for kind in ("cross-age", "same-age-hard"):
            figures = row[kind]
            cells = [value for key, value in figures.items() if key.startswith(("0-6", "7-12"))]
            lines.append(f"| {name} | {kind} | {figures['accuracy_at_own_threshold']:.2%} | {figures['auc']:.4f} | "
                         f"{figures['eer']:.2%} | {figures[f'tar_at_far_{CELL_FAR:g}']:.2%} | "
                         + " | ".join(f"{cell['right']['own_threshold']:.1%} / {cell['right']['far_threshold']:.1%} "
                                      f"({cell['pairs']})" for cell in cells) + " |")
    lines += ["", "0-6 and 7-12: across ages, same-person pairs whose younger photo is of that class, accepted; "
              "same-age hard, strangers of that class, told apart; at the model's own threshold (its training "
              "run's) and at the kind's FAR 1e-2 threshold.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("make", "faces"))
    parser.add_argument("--root", type=Path, required=True, help="the korean_family dataset's root")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        if args.step == "make":
            summary = make(args.root, seed=args.seed, device=args.device)
            print(f"{summary['edits']} edited photos ({len(summary['failed'])} failed) in {OUT_DIR / 'data'}")
        else:
            print(faces_markdown(faces(args.root, device=args.device)))
    except KfaceError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
