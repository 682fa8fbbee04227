"""How kface's shipped age editor is made and measured (run from the repository root).

    python -m kface.build.age_editor build --root ../shared/data/korean_family
        trains the editor (kface.ageedit.train, the settings in :data:`RECIPE`) on the Korean family set's
        training groups (the held-out groups of ``korean-heldout-families.txt`` never seen; a tenth of the rest
        held back for checks, group-disjoint), resuming ``runs/age-editor-korean-v1`` where a run was
        interrupted; exports its averaged weights to kface/models/age-editor-korean-v1.onnx and measures it.
    python -m kface.build.age_editor measure --root ../shared/data/korean_family
        scores the shipped file on the held-out groups (kface.ageedit.measures): reports/age-editing/
        (metrics.json, report.md, contact-sheet.png) and the card's figures.
    python -m kface.build.age_editor strengths --root ../shared/data/korean_family
        the same measures at each edit strength (kface age-edit --strength) on a seeded third of the held-out
        faces: reports/age-editing/strengths.{json,md}.

The card (age-editor-korean-v1.json) holds the data, recipe, training cost, seed, sha256, provenance and figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from ..ageedit import AGE_CLASSES, EDIT_SIZE
from ..ageedit.data import ChipSet, chip_set
from ..ageedit.editor import CARD_FILE, CHIP_SIZE, SHIPPED_NAME, AgeEditorModel, editor_card
from ..ageedit.measures import contact_sheet, measure_editor, write_report
from ..evaluation.heldout import HELDOUT_FILE, SOURCE, korean_split
from ..models import MODELS_DIR
from ..util.hashing import file_sha256
from ..util.outputs import write_json, write_text
from ..util.versions import versions

RUN_DIR = Path("runs") / SHIPPED_NAME
REPORT_DIR = Path("reports") / "age-editing"
NETWORK_FILE = MODELS_DIR / f"{SHIPPED_NAME}.onnx"
#: The shipped recipe: kface train-age-editor's defaults but for the steps one CPU core could give it.
RECIPE = {"size": EDIT_SIZE, "width": 16, "batch_size": 16, "steps": 700, "lr": 2e-4, "seed": 0,
          "checkpoint_minutes": 4.0}
BUILD_COMMAND = "python -m kface.build.age_editor build --root ../shared/data/korean_family"
MEASURE_COMMAND = "python -m kface.build.age_editor measure --root ../shared/data/korean_family"
STRENGTHS_COMMAND = "python -m kface.build.age_editor strengths --root ../shared/data/korean_family"
#: The strengths the sweep scores.
STRENGTHS = (1.0, 2.0, 3.0, 4.0)


def training_chips(root: Path, size: int):
    """The training groups' chips at ``size`` px, kept in the run folder (a resumed build reads them back)."""
    cached = RUN_DIR / "chips.npz"
    if cached.is_file():
        return ChipSet.load(cached)
    train, _ = korean_split(root)
    chips = chip_set(train, size, "family", progress=True)
    chips.save(cached)
    return chips


def heldout_chips(root: Path):
    """The held-out groups' 150 px chips (what the measures edit and judge)."""
    _, heldout = korean_split(root)
    return chip_set(heldout, CHIP_SIZE, "family", progress=True)


def build(root: Path, steps: int, device: str) -> dict:
    from ..ageedit.train import EditorTrainConfig, train_and_export
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    config = EditorTrainConfig(out=str(RUN_DIR), device=device, **{**RECIPE, "steps": steps})
    chips = training_chips(root, config.size)
    summary = train_and_export(chips, config, progress=True)
    shutil.copyfile(RUN_DIR / "editor.onnx", NETWORK_FILE)
    onnx = summary["onnx"]
    card = {
        "name": SHIPPED_NAME,
        "description": ("age editor: an aligned face chip shown at any of the 8 Korean age classes, by a "
                        "feature-decomposition autoencoder (after the study on age classification and synthesis "
                        "by feature decomposition) trained on Korean family-album faces"),
        "file": NETWORK_FILE.name, "sha256": file_sha256(NETWORK_FILE), "size_bytes": NETWORK_FILE.stat().st_size,
        "format": {"engine": "onnxruntime", **{k: onnx[k] for k in ("inputs", "outputs", "opset", "parity")}},
        "size": config.size, "classes": list(AGE_CLASSES),
        "chips": {"alignment": "dlib's 5-point alignment, 150 px, padding 0.25 (every kface model's chip), "
                               f"shrunk to {config.size} px by area averaging",
                  "detector": "auto", "fallback": "whole-image"},
        "recipe": {"config": config.to_dict(), "network": "kface.ageedit.network.AgeEditor",
                   "losses": ["L1 reconstruction (x10)", "L1 cycle (x10)", ("age cross-entropy on real chips and on "
                               "edits (frozen classifier)"), "hinge adversarial, projection patch discriminator",
                              ("perceptual: L1 on the frozen dlib face network's first two stages "
                               "(VGG/LPIPS weights do not install offline)"),
                              "identity: 1 - cosine of the dlib descriptors",
                              ("age judge: cross-entropy of the edits under a linear age classifier on the dlib "
                               "descriptor, fitted on real training chips first; off for judge_warmup steps, then "
                               "ramped in")]},
        "training": {"data": SOURCE, "held_out_families_file": HELDOUT_FILE.name,
                     "held_out_families_sha256": file_sha256(HELDOUT_FILE), "seed": config.seed,
                     "steps": summary["steps"], "seconds": summary["seconds"],
                     "seconds_per_step": summary["seconds_per_step"], "device": summary["device"],
                     "cpu": platform.processor() or platform.machine(), "torch_threads": 1,
                     "train_chips": summary["train_chips"], "val_chips": summary["val_chips"],
                     "train_groups": summary["train_groups"], "val_groups": summary["val_groups"],
                     "val": summary["val"], "age_judge_fit": summary["judge"],
                     "machine": "2 CPU cores shared with other jobs, one torch thread, no GPU"},
        "made_by": BUILD_COMMAND, "measured_by": MEASURE_COMMAND, "versions": versions(("torch", "numpy", "onnx")),
    }
    write_json(CARD_FILE, card)
    return card


def measure(root: Path, device: str) -> dict:
    editor_card.cache_clear()
    editor = AgeEditorModel(device=device)
    faces = heldout_chips(root)
    # The 150 px edits as kface age-edit makes them; the enlarged 64 px edits (--no-detail) cost as much again
    # to judge on this CPU and are left to measure_editor's other mode.
    result = measure_editor(editor, faces, device, detail_modes=(True,))
    sheet = REPORT_DIR / "contact-sheet.png"
    result["contact_sheet"] = {"file": sheet.name, "faces": contact_sheet(editor, faces, sheet)}
    write_report(result, REPORT_DIR, MEASURE_COMMAND, sheet.name)
    card = json.loads(CARD_FILE.read_text(encoding="utf-8"))
    detail = result["detail"]
    card["figures"] = {key: result[key] for key in ("faces", "groups", "reconstruction_l1", "cycle_l1",
                                                    "judge_on_unedited")}
    card["figures"].update({"edits": detail["edits"], "age": detail["age"], "same_person": detail["same_person"],
                            "same_person_within_two": detail["same_person_within_two"],
                            "identity_distance": detail["identity_distance"], "report": str(REPORT_DIR / "report.md")})
    write_json(CARD_FILE, card)
    return result


def strengths(root: Path, device: str, values: tuple[float, ...] = STRENGTHS) -> list[dict]:
    """The shipped editor's edits at each of ``values`` (``kface age-edit --strength``) on a seeded third of the
    held-out faces: how far the age moves against how often the person is kept."""
    editor = AgeEditorModel(device=device)
    faces = heldout_chips(root)
    picked = np.sort(np.random.default_rng(0).permutation(len(faces.ages))[:len(faces.ages) // 3])
    third = faces.subset(picked)
    rows = []
    for value in values:
        result = measure_editor(editor, third, device, detail_modes=(True,), strength=value)
        detail = result["detail"]
        rows.append({"strength": value, "faces": result["faces"], "edits": detail["edits"], "age": detail["age"],
                     "same_person": detail["same_person"], "same_person_within_two": detail["same_person_within_two"],
                     "identity_distance": detail["identity_distance"]})
    lines = [f"# The edit's strength on a third of the held-out faces ({rows[0]['faces']} faces, {rows[0]['edits']} "
             "edits)", "", f"Made by `{STRENGTHS_COMMAND}`.", "",
             "| strength | within one class of the target | exact | same person within two classes | same person |",
             "|---|---|---|---|---|"]
    lines += [f"| {row['strength']:g} | {row['age']['within_one']:.1%} | {row['age']['exact']:.1%} | "
              f"{row['same_person_within_two']:.1%} | {row['same_person']:.1%} |" for row in rows]
    write_json(REPORT_DIR / "strengths.json", {"made_by": STRENGTHS_COMMAND, "rows": rows})
    write_text(REPORT_DIR / "strengths.md", "\n".join(lines) + "\n")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "measure", "strengths"))
    parser.add_argument("--root", type=Path, required=True, help="the korean_family dataset's root")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"],
                        help="training steps (the shipped recipe's by default)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("KFACE_THREADS", "1")))
    if args.command == "strengths":
        strengths(args.root, args.device)
        return
    if args.command == "build":
        build(args.root, args.steps, args.device)
    measure(args.root, args.device)


if __name__ == "__main__":
    main()
