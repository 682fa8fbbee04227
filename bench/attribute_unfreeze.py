"""The learning rate of dlib's last stage when it trains for age group and gender (issue 18's lever).

    .venv/bin/python bench/attribute_unfreeze.py --root ../shared/data/korean_family
        [--suffix-lr 1e-4 --suffix-lr 3e-5] [--out reports/attributes-korean/unfreeze.json]

The shipped recipe (``last-stage`` in :mod:`kface.build.attributes`: ``kface train-attributes
--unfreeze last-stage``, the stage and one shared ordinal head) trained at each ``--suffix-lr`` on the same
data and split as the build (the training groups, a tenth of them val, group-disjoint, seed 0), through the
same code (:func:`kface.attributes.heads.fit_heads`). Val picks the learning rate (mean of age-class and
gender accuracy at each run's best epoch); the held-out groups' figures are printed beside, for the record,
never for the choice. About 2 minutes a rate here with the feature store warm.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "korean_family")
    parser.add_argument("--suffix-lr", type=float, action="append", help="repeatable; default 1e-4 and 3e-5")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "attributes-korean" / "unfreeze.json")
    args = parser.parse_args()
    if not (args.root / "identities.csv").is_file():
        sys.exit(f"error: {args.root}: not the korean_family set (no identities.csv)")
    from kface.attributes.heads import AttributeModel, fit_heads
    from kface.attributes.labels import AgeBins, split_by_group
    from kface.build.attributes import KOREAN_AGE_BINS, SHIPPED_RECIPE, figures, recipe_config, recipe_features
    from kface.util.outputs import write_json

    training = recipe_features(args.root, SHIPPED_RECIPE, heldout=False)
    heldout = recipe_features(args.root, SHIPPED_RECIPE, heldout=True)
    base = recipe_config(SHIPPED_RECIPE, args.root, Path("unused"))
    split = split_by_group(training.groups, (0.9, 0.1, 0.0), base.seed)
    bins = AgeBins(KOREAN_AGE_BINS)
    train = split == 0
    meta = {"tasks": ["age", "gender"], "classes": {"age": bins.labels, "gender": ["female", "male"]},
            "group_ages": bins.representative_ages(training.labels.ages[train], training.labels.targets["age"][train]),
            "backbone": base.backbone}
    rows = []
    for suffix_lr in args.suffix_lr or [1e-4, 3e-5]:
        config = replace(base, suffix_lr=suffix_lr)
        network, history, epoch = fit_heads(training.embeddings, training.labels.targets, split,
                                            {"age": len(bins), "gender": 2}, config, mirrored=training.mirrored)
        model = AttributeModel(network, {**meta, "config": config.to_dict()})
        best = history[epoch - 1]
        row = {"suffix_lr": suffix_lr, "best_epoch": epoch,
               "val": {key: best[key] for key in ("val_age_accuracy", "val_gender_accuracy", "val_accuracy")},
               "heldout": {key: value for key, value in figures(model, heldout).items() if key != "per_class"}}
        rows.append(row)
        print(f"suffix lr {suffix_lr:g}: best epoch {epoch}, val {row['val']}, held-out {row['heldout']}", flush=True)
    chosen = max(rows, key=lambda row: row["val"]["val_accuracy"])
    write_json(args.out, {"recipe": SHIPPED_RECIPE, "seed": base.seed, "train_images": int(train.sum()),
                          "val_images": int((split == 1).sum()), "heldout_images": len(heldout.paths),
                          "chosen_by_val": chosen["suffix_lr"], "rows": rows,
                          "command": "python bench/attribute_unfreeze.py " + " ".join(sys.argv[1:])})
    print("| suffix lr | best epoch | val age / gender | held-out exact | within one | MAE years | gender |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        h, v = row["heldout"], row["val"]
        mark = " (chosen on val)" if row is chosen else ""
        print(f"| {row['suffix_lr']:g}{mark} | {row['best_epoch']} | {v['val_age_accuracy']:.1%} / "
              f"{v['val_gender_accuracy']:.1%} | {h['exact']:.1%} | {h['within_one']:.1%} | {h['mae_years']:.2f} | "
              f"{h['gender']:.1%} |")


if __name__ == "__main__":
    main()
