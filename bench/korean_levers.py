"""What the inference-time levers are worth on Korean families, fold by fold of the family protocol.

For each fold of ``kface benchmark families`` (run first, so its per-fold models exist under
``<protocol>/runs/<recipe>/fold<k>/model.pt``), the fold's own model is scored on the held-out fold's
pairs in several variants, each with a threshold chosen (max-accuracy) on that model's own val pairs:

- ``as trained``: the model as saved;
- ``flip``: each vector averaged with its mirror chip's (``--tta flip``);
- ``+ base``: the tuned vector concatenated with ``weight`` x stock dlib's (an ensemble), and ``flip + base``,
  the flip-averaged one so concatenated (the shipped Korean model's layout, at ``--weight 0.5``);
- ``AS-norm``: adaptive score normalisation of the distance against a cohort of the fold's training
  families (``--cohort`` images, the ``--top`` closest).

Prints a Markdown table (accuracy mean ± std over folds, per pair kind) and writes it beside the
protocol's benchmark.md as levers.md.

    python bench/korean_levers.py --protocol reports/korean-protocol --recipe last-stage-metric
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KOREAN = (REPO / ".." / "shared" / "data" / "korean_family").resolve()


def chip_vectors(graph, chips: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([graph(torch.from_numpy(chips[i:i + 64])).numpy() for i in range(0, len(chips), 64)])


def as_norm(vectors: np.ndarray, first: np.ndarray, second: np.ndarray, cohort: np.ndarray, top: int) -> np.ndarray:
    """Symmetric adaptive s-norm of the Euclidean distance (smaller still means more alike)."""
    to_cohort = np.sqrt(((vectors[:, None, :] - cohort[None]) ** 2).sum(-1))
    nearest = np.sort(to_cohort, axis=1)[:, :top]
    mean, std = nearest.mean(1), nearest.std(1) + 1e-9
    raw = np.linalg.norm(vectors[first] - vectors[second], axis=1)
    return 0.5 * ((raw - mean[first]) / std[first] + (raw - mean[second]) / std[second])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", type=Path, default=REPO / "reports" / "korean-protocol")
    parser.add_argument("--recipe", default="last-stage-metric")
    parser.add_argument("--cohort", type=int, default=1000)
    parser.add_argument("--top", type=int, default=200)
    parser.add_argument("--weight", type=float, default=0.3)
    args = parser.parse_args()

    from kface.datasets import load_dataset
    from kface.embeddings.embedder import Embedder
    from kface.evaluation.families import FamilyProtocol, family_folds, protocol_pairs
    from kface.evaluation.groups import distinct_images
    from kface.metrics import accuracy_at, choose_threshold
    from kface.training.checkpoints import load_checkpoint
    from kface.training.export import checkpoint_graph

    body = json.loads((args.protocol / "benchmark.json").read_text())
    protocol = FamilyProtocol(**body["protocol"])
    index = load_dataset("csv", KOREAN, manifest=KOREAN / "identities.csv")
    if body["dataset"].get("copies_left_out") is not None:  # the protocol merged copies: the same index here
        index, _ = distinct_images(index, np.arange(len(index)), protocol.group_by)
    folds = family_folds(index, protocol)
    pairs = protocol_pairs(index, folds, protocol)
    embedder = Embedder("dlib-resnet", detector="auto", fallback="whole-image")
    paths = [str(index.absolute_path(i)) for i in range(len(index))]
    row_of = {path: i for i, path in enumerate(paths)}
    variants = ("as trained", "flip", f"+ {args.weight} x base", f"flip + {args.weight} x base", "AS-norm")
    scores = {variant: {kind: [] for kind in ("cross-age", "same-age-hard")} for variant in variants}
    rng = np.random.default_rng(0)
    for fold in range(protocol.folds):
        run = args.protocol / "runs" / args.recipe / f"fold{fold}"
        checkpoint = load_checkpoint(run / "model.pt")
        with open(run / "pairs.csv", newline="") as handle:
            val = [row for row in csv.DictReader(handle) if row["split"] == "val"]
        val_a = np.array([row_of[str(KOREAN / row["path_a"])] for row in val])
        val_b = np.array([row_of[str(KOREAN / row["path_b"])] for row in val])
        val_labels = np.array([int(row["label"]) for row in val])
        train_rows = np.flatnonzero(folds != fold)
        cohort_rows = rng.choice(train_rows, size=min(args.cohort, len(train_rows)), replace=False)
        test = pairs.folds == fold
        needed = np.unique(np.concatenate([val_a, val_b, cohort_rows, pairs.first[test], pairs.second[test]]))
        entries, _ = embedder.faces([paths[i] for i in needed], on_error="raise")
        chips = np.stack([entry.chip for entry in entries])
        position = np.full(len(index), -1)
        position[needed] = np.arange(len(needed))
        graph = checkpoint_graph(checkpoint).eval()
        vectors = {}
        graph.flip = checkpoint["features"]["tta"] == "flip"
        vectors["as trained"] = chip_vectors(graph, chips)
        graph.flip = True
        vectors["flip"] = chip_vectors(graph, chips)
        base = embedder.embed([paths[i] for i in needed]).embeddings
        vectors[variants[2]] = np.hstack([vectors["as trained"], args.weight * base])
        vectors[variants[3]] = np.hstack([vectors["flip"], args.weight * base])  # the shipped model's layout
        for variant in variants:
            v = vectors["as trained"] if variant == "AS-norm" else vectors[variant]
            cohort = v[position[cohort_rows]]

            def distances(first, second, variant=variant, v=v, cohort=cohort, position=position):
                if variant == "AS-norm":
                    return as_norm(v, position[first], position[second], cohort, args.top)
                return np.linalg.norm(v[position[first]] - v[position[second]], axis=1)

            threshold = choose_threshold(distances(val_a, val_b), val_labels, "max-accuracy").value
            for kind in scores[variant]:
                chosen = test & (pairs.kinds == kind)
                d = distances(pairs.first[chosen], pairs.second[chosen])
                scores[variant][kind].append(accuracy_at(d, pairs.labels[chosen], threshold))
        print(f"fold {fold}: " + ", ".join(f"{variant} {100 * scores[variant]['cross-age'][-1]:.2f}/"
                                           f"{100 * scores[variant]['same-age-hard'][-1]:.2f}" for variant in variants),
              flush=True)
    lines = [f"Levers on `{args.recipe}`'s fold models ({protocol.folds}-fold family protocol; threshold: "
             f"max-accuracy on each fold model's own val pairs)", "",
             "| variant | cross-age accuracy | same-age hard accuracy |", "|---|---:|---:|"]
    for variant in variants:
        cross, hard = (np.array(scores[variant][kind]) for kind in ("cross-age", "same-age-hard"))
        lines.append(f"| {variant} | {100 * cross.mean():.2f}% ± {100 * cross.std(ddof=1):.2f} | "
                     f"{100 * hard.mean():.2f}% ± {100 * hard.std(ddof=1):.2f} |")
    table = "\n".join(lines) + "\n"
    (args.protocol / f"levers-{args.recipe}.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
