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
from ..datasets import EDITED_COLUMN
from ..errors import KfaceError
from ..evaluation.heldout import HELDOUT_FILE, korean_split
from ..util.hashing import file_sha256
from ..util.outputs import write_json, write_text

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
    except KfaceError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
