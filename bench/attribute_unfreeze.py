"""Age group and gender with the face network's last stage trained for them (issue 18's untried lever).

    .venv/bin/python bench/attribute_unfreeze.py --root ../shared/data/korean_family [--epochs 20]
        [--suffix-lr 1e-4 --suffix-lr 3e-5] [--seed 0] [--out reports/attributes-korean/unfreeze.json]

The shipped heads (``attributes-korean-v3``) read a frozen embedding. Here dlib's last stage and final
layer (the ``last-stage`` cut of ``dlib-torch``, as the Korean face model trains it) train together with
one shared head for both tasks (ordinal age over the set's 8 classes, gender; the loss, class weights and
head layout of ``kface train-attributes``), from the feature store's cached prefix outputs of each chip
and its mirror image (a random view per example; both averaged at evaluation).

Same data as the shipped heads: the merged korean_family set, the 16 held-out groups never trained on
(the test set), a tenth of the other groups (group-disjoint, seed) picking the epoch. Rows:

- ``frozen``: the same code with the suffix learning rate 0: heads on stock dlib's vector;
- ``last-stage lr X``: the suffix trains at X (heads at ``--head-lr``);

each scored on the held-out groups (exact, within one class, MAE in years of the expected age, gender),
beside the shipped heads' card figures. Prints a table and writes ``--out`` (JSON). About 2 minutes an
epoch-set here with the feature store warm.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load(root: Path, heldout: bool, store):
    """Features (V, N, ...) float16, labels and family groups of the training or held-out index."""
    from kface.attributes.labels import AgeBins, label_targets
    from kface.models.build_attributes import KOREAN_AGE_BINS, korean_index
    from kface.pairs.sampling import identity_groups

    index = korean_index(root, heldout)
    labels = label_targets(index.attributes, len(index), ("age", "gender"), AgeBins(KOREAN_AGE_BINS))
    paths = [str(index.absolute_path(i)) for i in range(len(index))]
    found = store.features(paths)
    keep = found.ok & (labels.targets["age"] >= 0) & (labels.targets["gender"] >= 0)
    groups = identity_groups(index, index.identity_codes, "family")
    return SimpleNamespace(features=found.features[keep].swapaxes(0, 1), ages=labels.ages[keep],
                           targets={task: target[keep] for task, target in labels.targets.items()},
                           groups=groups[keep], dropped=int((~keep).sum()))


def train(data, split, suffix_lr: float, args, classes: dict, group_ages):
    """The suffix (trainable at ``suffix_lr``; 0 keeps it frozen) and shared ordinal heads; the best epoch on
    val (mean of age exact and gender accuracy, as ``train-attributes`` picks)."""
    import torch
    from torch import nn

    from kface.attributes.heads import AttributeHeads, _loss
    from kface.attributes.labels import class_weights
    from kface.backbones.trainable import build_suffix, load_network

    torch.manual_seed(args.seed)
    suffix = build_suffix(load_network("dlib-torch"), "last-stage")
    features = torch.from_numpy(data.features)  # (V, N, C, H, W) float16
    targets = {task: torch.from_numpy(t) for task, t in data.targets.items()}
    train_rows = np.flatnonzero(split == 0)
    val_rows = torch.from_numpy(np.flatnonzero(split == 1))

    def vectors(rows, view, grad: bool):
        with torch.set_grad_enabled(grad):
            return suffix(features[view, rows].float().contiguous(memory_format=torch.channels_last))

    suffix.eval()
    with torch.no_grad():
        start = torch.cat([vectors(torch.from_numpy(train_rows[i:i + 512]), v, False)
                           for v in range(2) for i in range(0, len(train_rows), 512)])
    heads = AttributeHeads(start.shape[1], classes, hidden=512, dropout=0.3, trunk="shared", ordinal_age=True)
    heads.mean.copy_(start.mean(dim=0))
    heads.scale.copy_(start.std(dim=0).clamp_min(1e-6))
    train_ages = data.targets["age"][train_rows]
    above = np.array([np.mean(train_ages > k) for k in range(classes["age"] - 1)]).clip(1e-3, 1 - 1e-3)
    heads.age_output.bias.data.copy_(torch.from_numpy(np.log(above / (1 - above))).float())
    weights = {task: torch.tensor(class_weights(data.targets[task][train_rows], count), dtype=torch.float32)
               for task, count in classes.items()}
    groups = [{"params": heads.parameters(), "lr": args.head_lr}]
    if suffix_lr > 0:
        groups.append({"params": suffix.parameters(), "lr": suffix_lr})
    else:
        for parameter in suffix.parameters():
            parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(groups, weight_decay=1e-4)
    shuffler = torch.Generator().manual_seed(args.seed)
    best, history = None, []
    for epoch in range(1, args.epochs + 1):
        started = time.time()
        suffix.train(suffix_lr > 0)
        heads.train()
        order = torch.from_numpy(train_rows)[torch.randperm(len(train_rows), generator=shuffler)]
        views = torch.randint(2, (len(order),), generator=shuffler)
        total = 0.0
        for rows, row_views in zip(order.split(args.batch_size), views.split(args.batch_size)):
            x = features[row_views, rows].float()
            with torch.set_grad_enabled(True):
                out = heads(suffix(x.contiguous(memory_format=torch.channels_last)))
                loss = _loss(out, {t: targets[t][rows] for t in classes}, weights, ordinal=True)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss)
        probs = predict(suffix, heads, features, val_rows)
        accuracy = {t: float(np.mean(probs[t].argmax(1) == data.targets[t][val_rows.numpy()])) for t in classes}
        score = float(np.mean(list(accuracy.values())))
        history.append({"epoch": epoch, "train_loss": total, "val": accuracy, "seconds": round(time.time() - started, 1)})
        print(f"  lr {suffix_lr:g} epoch {epoch}: loss {total:.1f}, val age {accuracy['age']:.3f} "
              f"gender {accuracy['gender']:.3f} ({time.time() - started:.0f} s)", flush=True)
        if best is None or score > best[0]:
            best = (score, epoch, copy.deepcopy(suffix.state_dict()), copy.deepcopy(heads.state_dict()))
    suffix.load_state_dict(best[2])
    heads.load_state_dict(best[3])
    return suffix, heads, best[1], history


def predict(suffix, heads, features, rows) -> dict:
    """Probabilities per task, averaged over the chip and its mirror image."""
    import torch

    from kface.attributes.answers import average_views

    suffix.eval()
    heads.eval()
    views = []
    with torch.no_grad():
        for view in range(features.shape[0]):
            chunks = [heads.probabilities(suffix(features[view, rows[i:i + 256]].float()
                                                 .contiguous(memory_format=torch.channels_last)))
                      for i in range(0, len(rows), 256)]
            views.append({t: torch.cat([c[t] for c in chunks]).numpy() for t in chunks[0]})
    return {t: average_views([v[t] for v in views]) for t in views[0]}


def figures(probs: dict, data, group_ages) -> dict:
    age, gender = data.targets["age"], data.targets["gender"]
    predicted = probs["age"].argmax(1)
    return {"n": int(len(age)), "exact": float(np.mean(predicted == age)),
            "within_one": float(np.mean(np.abs(predicted - age) <= 1)),
            "mae_years": float(np.mean(np.abs(probs["age"] @ np.asarray(group_ages) - data.ages))),
            "gender": float(np.mean(probs["gender"].argmax(1) == gender))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "korean_family")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--suffix-lr", type=float, action="append", help="repeatable; default 1e-4 and 3e-5")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "attributes-korean" / "unfreeze.json")
    args = parser.parse_args()
    if not (args.root / "identities.csv").is_file():
        sys.exit(f"error: {args.root}: not the korean_family set (no identities.csv)")
    import torch

    from kface.attributes.labels import AgeBins, split_by_group
    from kface.models.build_attributes import KOREAN_AGE_BINS
    from kface.outputs import write_json
    from kface.training.store import FeatureSpec, FeatureStore

    torch.set_num_threads(2)
    store = FeatureStore(FeatureSpec(backbone="dlib-torch", cut="last-stage", detector="auto", fallback="whole-image"),
                         workers=2, progress=True)
    training, heldout = load(args.root, False, store), load(args.root, True, store)
    split = split_by_group(training.groups, (0.9, 0.1, 0.0), args.seed)
    bins = AgeBins(KOREAN_AGE_BINS)
    group_ages = bins.representative_ages(training.ages[split == 0], training.targets["age"][split == 0])
    classes = {"age": len(bins), "gender": 2}
    card = json.loads((REPO / "kface" / "models" / "attributes-korean-v3.json").read_text())
    rows = []
    for suffix_lr in [0.0] + (args.suffix_lr or [1e-4, 3e-5]):
        started = time.time()
        suffix, heads, epoch, history = train(training, split, suffix_lr, args, classes, group_ages)
        probs = predict(suffix, heads, torch.from_numpy(heldout.features), torch.arange(heldout.features.shape[1]))
        row = {"run": "frozen" if suffix_lr == 0 else f"last-stage lr {suffix_lr:g}", "suffix_lr": suffix_lr,
               "best_epoch": epoch, "heldout": figures(probs, heldout, group_ages), "history": history,
               "minutes": round((time.time() - started) / 60, 1)}
        rows.append(row)
        print(row["run"], row["heldout"], f"epoch {epoch}", flush=True)
    result = {"seed": args.seed, "epochs": args.epochs, "head_lr": args.head_lr, "batch_size": args.batch_size,
              "train_images": int((split == 0).sum()), "val_images": int((split == 1).sum()),
              "heldout_images": int(heldout.features.shape[1]), "rows": rows,
              "shipped_card_figures": card.get("figures"),
              "command": "python bench/attribute_unfreeze.py " + " ".join(sys.argv[1:])}
    write_json(args.out, result)
    print("| run | best epoch | exact | within one | MAE years | gender |\n|---|---:|---:|---:|---:|---:|")
    for row in rows:
        h = row["heldout"]
        print(f"| {row['run']} | {row['best_epoch']} | {h['exact']:.1%} | {h['within_one']:.1%} | "
              f"{h['mae_years']:.2f} | {h['gender']:.1%} |")


if __name__ == "__main__":
    main()
