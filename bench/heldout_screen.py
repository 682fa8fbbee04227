"""Screen training recipes for the Korean model on the held-out groups: each recipe trained like the shipped
one (the same training groups, val split and seed), all scored with the family protocol on the held-out groups.

    .venv/bin/python bench/heldout_screen.py --root ../shared/data/korean_family --work /tmp/screen \\
        --recipe kface/models/recipes/korean-v4.json --recipe kface/models/recipes/all-metric.json \\
        [--allow-cpu-all] [--device auto]

A recipe is a JSON file of ``kface train`` settings (see ``kface/models/recipes/``); its run goes to
``WORK/runs/<file stem>`` and is reused when its model.pt is there. ``--allow-cpu-all`` lifts, for this
measurement only, the guard that keeps ``--unfreeze all`` to a GPU: on this project's 2-core AVX-512 CPU
the whole dlib network trains at about 170 images/s (forward and backward, batch 32), about 40 s an epoch
of the Korean training groups. Figures per recipe: accuracy at the run's own threshold and at thresholds
chosen on the other held-out folds, AUC and EER, cross-age / same-age hard.

One split (707 images of 63 people): a screen, not a verdict; a recipe worth shipping is measured
with the k-fold protocol (``kface benchmark families --recipe``) before it replaces the shipped one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def allow_cpu_all() -> None:
    """Let ``--unfreeze all`` train on the CPU in this process (the product refuses it off a GPU)."""
    from kface.training import config, run

    def allowed(cut: str, device_type: str) -> None:
        return None

    config.check_cut_device = run.check_cut_device = allowed


def score_heldout(root: Path, models: list[str], labels: list[str], out: Path, device: str, what: str) -> None:
    """Score checkpoints with the family protocol on the held-out groups and print one table row each."""
    from kface.evaluation.family_run import run_benchmark
    from kface.evaluation.heldout import HELDOUT_FILE

    rows = run_benchmark("csv", str(root), {"manifest": str(root / "identities.csv")}, groups_file=str(HELDOUT_FILE),
                         models=tuple(models), out=out, device=device)
    print(f"held-out groups ({HELDOUT_FILE.name}); {what}:")
    print("| run | own threshold: cross-age / hard | other folds' thresholds: cross-age / hard | AUC | EER |")
    print("|---|---:|---:|---:|---:|")
    for label, row in zip(labels, rows):
        cross, hard = row["pair_kinds"]["cross-age"], row["pair_kinds"]["same-age-hard"]
        print(f"| {label} | {100 * cross['accuracy']:.2f}% / {100 * hard['accuracy']:.2f}% | "
              f"{100 * cross['accuracy_folds_threshold']:.2f}% / {100 * hard['accuracy_folds_threshold']:.2f}% | "
              f"{cross['auc']:.4f} / {hard['auc']:.4f} | {100 * cross['eer']:.2f}% / {100 * hard['eer']:.2f}% |")
    print(f"report: {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the korean_family folder")
    parser.add_argument("--work", type=Path, required=True, help="a folder outside the repository for the runs")
    parser.add_argument("--recipe", type=Path, action="append", required=True, help="a recipe JSON (repeatable)")
    parser.add_argument("--allow-cpu-all", action="store_true", help="train --unfreeze all on the CPU")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.allow_cpu_all:
        allow_cpu_all()

    from kface.build.korean import train_korean

    models = []
    for recipe_file in args.recipe:
        run = args.work / "runs" / recipe_file.stem
        model = run / "model.pt"
        if not model.is_file():
            settings = json.loads(recipe_file.read_text(encoding="utf-8"))
            train_korean(args.root, run, args.device, progress=False, settings=settings)
            print(f"trained {recipe_file.name} into {run}", flush=True)
        models.append(str(model))
    score_heldout(args.root, models, [recipe_file.stem for recipe_file in args.recipe], args.work / "heldout",
                  args.device, "each recipe trained on the other groups (seed 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
