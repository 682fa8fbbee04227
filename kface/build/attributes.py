"""How kface's shipped Korean age-group and gender model is made (run from the repository root).

    python -m kface.build.attributes compare --root ../shared/data/korean_family
        scores every candidate recipe (:data:`RECIPES`) by group-disjoint k-fold over the training
        groups of related families (the held-out ones never used): reports/attributes-korean/recipes.{json,md}.
    python -m kface.build.attributes build --root ../shared/data/korean_family
        trains the shipped recipe with kface train-attributes on every training group (a tenth of the
        groups as val, group-disjoint), exports it to kface/models/attributes-korean-v4.onnx (aligned chips
        in, probabilities out), scores that file, its checkpoint and the frozen-embedding recipes it
        replaced on the held-out groups (overall and per age class) and writes the card
        attributes-korean-v4.json.
    python -m kface.build.attributes build --root DATASET --candidate NAME
        the same recipe as a candidate named apart, on any folder laid out like korean_family (identities.csv and
        its images): run folder runs/attributes-NAME; the ONNX file, its card and the held-out report in
        reports/attributes-candidate-NAME/, scored beside the shipped file on the same held-out faces (whether it
        beats it on exact, within one and gender); kface/models is left untouched.

The shipped recipe (``last-stage``) trains dlib's last stage and final layer with one shared ordinal head
(``--unfreeze last-stage``); the recipes before it read a frozen vector, the Korean face model's
(:data:`INPUT_BACKBONE`), which on the training groups' 5 group folds (ordinal recipe) beat stock dlib's
128-d descriptor on every figure: age exact 56.5% against 53.8%, within one class 92.5% against 91.5%,
MAE 5.77 against 6.17 years, gender 90.4% against 86.8%. Held-out groups: ``korean-heldout-families.txt``
(the face model's too).
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..attributes.labels import AgeBins, AttributeConfig, LabelledData
from ..attributes.shipped import ShippedAttributeModel
from ..attributes.train import Features, dataset_features, train_attributes
from ..backbones.trainable import inference_network, load_network
from ..embeddings.embedder import Embedder
from ..errors import InputError, KfaceError
from ..evaluation.family_scoring import write_manifest
from ..evaluation.heldout import HELDOUT_FILE, korean_split, source_text
from ..models import MODEL_FAMILIES, checked_card
from ..models import attributes as shipped
from ..models.attributes import CARD_FILE, NETWORK_FILE, OUTPUT_NAME, SHIPPED_NAME
from ..util.hashing import file_sha256
from ..util.outputs import write_json, write_text

#: The dataset's 8 age classes a..h: 0-6, 7-12, 13-19, 20-30, 31-45, 46-55, 56-66, 67-80.
KOREAN_AGE_BINS = (0, 7, 13, 20, 31, 46, 56, 67)
CLASS_NAMES = "abcdefgh"
RUN_DIR = Path("runs") / SHIPPED_NAME
REPORT_DIR = Path("reports") / "attributes-korean"
FOLDS = 5
SEED = 0
#: The network whose embeddings the heads read: the shipped Korean face model's.
INPUT_BACKBONE = MODEL_FAMILIES["korean"]
#: Settings every recipe shares (the rest of AttributeConfig keeps its defaults).
BASE = {"dataset": "csv", "task": "both", "age_bins": KOREAN_AGE_BINS, "detector": "auto", "backbone": INPUT_BACKBONE,
        "fallback": "whole-image", "group_by": "family", "seed": SEED, "hog_policy": "fixed"}
#: Larger batches and learning rate: today's 60 epochs at 1e-4 had not converged by their last epoch.
FASTER = {"epochs": 60, "lr": 1e-3, "batch_size": 256}
#: dlib's last stage and final layer train with the heads (from its prefix features: the chips of today's
#: HOG policy, as analyze cuts them); 20 epochs at batch 64, the layers at 1e-4.
LAST_STAGE = {"age_loss": "ordinal", "tta": "flip", "trunk": "shared", "lr": 1e-3, "batch_size": 64, "epochs": 20,
              "backbone": "dlib-torch", "unfreeze": "last-stage", "suffix_lr": 1e-4, "hog_policy": "sized"}
#: Candidate recipes, each one lever on the row before it; "today" is train-attributes' defaults.
RECIPES = {
    "today": {},
    "faster": FASTER,
    "balanced": {**FASTER, "sampling": "balanced"},
    "ordinal": {**FASTER, "age_loss": "ordinal"},
    "ordinal+flip": {**FASTER, "age_loss": "ordinal", "tta": "flip"},
    "ordinal+flip+shared": {**FASTER, "age_loss": "ordinal", "tta": "flip", "trunk": "shared"},
    "last-stage": LAST_STAGE,
    "last-stage+balanced": {**LAST_STAGE, "sampling": "balanced"},
    "last-block": {**LAST_STAGE, "unfreeze": "last-block"},
}
SHIPPED_RECIPE = "last-stage"
#: Frozen-embedding recipes scored beside the shipped one on the held-out groups, with their row names.
REPLACED_RECIPES = {"ordinal": "ordinal on the Korean model's vector (v3's recipe)",
                    "today": "train-attributes defaults on the Korean model's vector (frozen MLP)"}
#: The aligned chips the shipped network reads (every kface model's: dlib's 150 px alignment).
CHIP_SIZE = 150
COMPARE_COMMAND = "python -m kface.build.attributes compare --root ../shared/data/korean_family"
BUILD_COMMAND = "python -m kface.build.attributes build --root ../shared/data/korean_family"
#: A candidate's name: its run folder is runs/attributes-NAME, its files reports/attributes-candidate-NAME/.
CANDIDATE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
#: The figures a candidate must beat the shipped file on (held-out groups) to replace it.
SHIP_RULE = ("exact", "within_one", "gender")


@dataclass(frozen=True)
class BuildTarget:
    """Where ``build`` writes: the shipped model's files, or a candidate's named apart (kface/models untouched)."""

    name: str
    run_dir: Path
    network_file: Path
    card_file: Path
    report_dir: Path
    made_by: str
    candidate: bool


def build_target(root: Path, candidate: Optional[str] = None) -> BuildTarget:
    """The shipped model's files, or (``candidate``) runs/attributes-NAME and reports/attributes-candidate-NAME/."""
    command = f"python -m kface.build.attributes build --root {root}"
    if candidate is None:
        return BuildTarget(SHIPPED_NAME, RUN_DIR, NETWORK_FILE, CARD_FILE, REPORT_DIR, command, candidate=False)
    if not CANDIDATE_NAME.fullmatch(candidate):
        raise InputError(f"--candidate {candidate!r}: use lower-case letters, digits, '.' and '-' "
                         f"(it names runs/attributes-NAME and reports/attributes-candidate-NAME)")
    name = f"attributes-{candidate}"
    folder = Path("reports") / f"attributes-candidate-{candidate}"
    return BuildTarget(name, Path("runs") / name, folder / f"{name}.onnx", folder / f"{name}.json", folder,
                       f"{command} --candidate {candidate}", candidate=True)


def check_root(root: Path) -> None:
    """Refuse a dataset folder without the korean_family layout's manifest before anything is trained or written."""
    if not (root / "identities.csv").is_file():
        raise InputError(f"{root}: no identities.csv; give a folder laid out like korean_family "
                         f"(identities.csv with path,identity,family,gender,age_class,age and the images)")


def recipe_config(name: str, root: Path, out: Path, device: str = "auto"):
    return AttributeConfig(root=str(root), out=str(out), device=device, **{**BASE, **RECIPES[name]})


def korean_index(root: Path, heldout: bool):
    """The merged korean_family index (each image once, each person once) of every group of related families
    but the held-out ones, or (``heldout``) of the held-out groups (:func:`~kface.evaluation.heldout.korean_split`)."""
    training, heldout_index = korean_split(root)
    return heldout_index if heldout else training


def korean_features(root: Path, heldout: bool, device: str = "auto", hog_policy: str = BASE["hog_policy"]):
    """Embeddings (and mirror-image embeddings) with labels of the training or held-out families."""
    config = replace(recipe_config("ordinal+flip", root, Path("unused"), device),  # tta flip: both views
                     hog_policy=hog_policy)
    return dataset_features(korean_index(root, heldout), config, ("age", "gender"), AgeBins(KOREAN_AGE_BINS),
                            progress=True)


def recipe_features(root: Path, name: str, heldout: bool, device: str = "auto"):
    """What recipe ``name`` reads (its backbone's prefix features where it unfreezes layers), with labels, of the
    training or held-out families."""
    return dataset_features(korean_index(root, heldout), recipe_config(name, root, Path("unused"), device),
                            ("age", "gender"), AgeBins(KOREAN_AGE_BINS), progress=True)


def figures(model, features, probabilities: Optional[dict] = None) -> dict:
    """Age-class exact and within-one accuracy, MAE in years (class midpoints) and gender accuracy, overall
    and per true age class, of ``model`` on ``features`` (or of ``probabilities`` already computed for them)."""
    if probabilities is None:
        probabilities = model.probabilities(features.embeddings,
                                            features.mirrored if model.tta == "flip" else None)
    age_truth = features.labels.targets["age"]
    predicted = probabilities["age"].argmax(axis=1)
    gender_right = probabilities["gender"].argmax(axis=1) == features.labels.targets["gender"]
    midpoints = np.asarray(model.group_ages)
    years = np.abs(probabilities["age"] @ midpoints - features.labels.ages)

    def summary(rows: np.ndarray) -> dict:
        return {"n": int(rows.sum()), "exact": float(np.mean(predicted[rows] == age_truth[rows])),
                "within_one": float(np.mean(np.abs(predicted[rows] - age_truth[rows]) <= 1)),
                "mae_years": float(np.mean(years[rows])),
                "mae_years_group": float(np.mean(np.abs(midpoints[predicted[rows]] - features.labels.ages[rows]))),
                "gender": float(np.mean(gender_right[rows]))}

    everything = np.ones(len(age_truth), dtype=bool)
    return {**summary(everything),
            "per_class": {f"{CLASS_NAMES[k]} {label}": summary(age_truth == k)
                          for k, label in enumerate(model.age_labels) if np.any(age_truth == k)}}


# --------------------------------------------------------------------------- compare


def compare(root: Path, device: str = "auto", out: Path = REPORT_DIR, max_folds: int = FOLDS,
            recipes: tuple[str, ...] = tuple(RECIPES)) -> list[dict]:
    """``recipes`` on the first ``max_folds`` of FOLDS family folds of the training families: train on three
    folds, pick the epoch on one, score the last; mean and spread over the folds run."""
    from ..attributes.heads import AttributeModel, fit_heads
    inputs: dict = {}  # the recipes' inputs: the Korean model's vectors, or a backbone's prefix features
    rows = []
    for name in recipes:
        config = recipe_config(name, root, out, device)
        source = (config.backbone, config.unfreeze)
        if source not in inputs:
            inputs[source] = (korean_features(root, heldout=False, device=device) if config.unfreeze == "none"
                              else recipe_features(root, name, heldout=False, device=device))
        features = inputs[source]
        fold_of = _family_folds(features.groups)
        scores = []
        for fold in range(max_folds):
            split = np.where(fold_of == fold, 2, np.where(fold_of == (fold + 1) % FOLDS, 1, 0))
            heads, _, best_epoch = fit_heads(features.embeddings, features.labels.targets, split,
                                             {"age": len(KOREAN_AGE_BINS), "gender": 2}, config,
                                             mirrored=features.mirrored if config.tta == "flip" else None)
            model = AttributeModel(heads, {"tasks": ["age", "gender"], "config": config.to_dict(),
                                           "classes": {"age": _labels(), "gender": ["female", "male"]},
                                           "group_ages": _group_ages(features), "backbone": config.backbone})
            test = split == 2
            scores.append(figures(model, _rows(features, test)))
        row = {"recipe": name, "settings": RECIPES[name], "folds": scores}
        for key in ("exact", "within_one", "mae_years", "gender"):
            values = [score[key] for score in scores]
            row[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        rows.append(row)
        print(f"{name}: exact {row['exact']['mean']:.3f} within-one {row['within_one']['mean']:.3f} "
              f"MAE {row['mae_years']['mean']:.2f} gender {row['gender']['mean']:.3f}", flush=True)
        write_json(out / "recipes.json", {"command": COMPARE_COMMAND, "folds": FOLDS, "folds_run": max_folds,
                                          "seed": SEED, "rows": rows})
        write_text(out / "recipes.md", recipes_markdown(rows, max_folds))
    return rows


def _family_folds(groups: np.ndarray) -> np.ndarray:
    """Fold number per image: the families shuffled (seeded) and dealt round-robin into FOLDS folds."""
    families = np.unique(groups)
    order = np.random.default_rng(SEED).permutation(len(families))
    fold_of_family = np.empty(int(families.max()) + 1, dtype=np.int64)
    fold_of_family[families[order]] = np.arange(len(families)) % FOLDS
    return fold_of_family[groups]


def _labels() -> list[str]:
    return AgeBins(KOREAN_AGE_BINS).labels


def _group_ages(features) -> list[float]:
    return AgeBins(KOREAN_AGE_BINS).representative_ages(features.labels.ages, features.labels.targets["age"])


def _rows(features, keep: np.ndarray):
    labels = LabelledData({task: target[keep] for task, target in features.labels.targets.items()},
                          features.labels.ages[keep])
    return Features([p for p, k in zip(features.paths, keep) if k], features.embeddings[keep], features.groups[keep],
                    labels, {}, {}, None if features.mirrored is None else features.mirrored[keep])


def _percent(entry: dict) -> str:
    return f"{100 * entry['mean']:.1f}% ± {100 * entry['std']:.1f}"


def recipes_markdown(rows: list[dict], max_folds: int = FOLDS) -> str:
    lines = [f"Family-disjoint {FOLDS}-fold over the training families, {max_folds} fold(s) run (held-out families "
             f"never used; per fold: train on 3 folds, best epoch on 1, scored on 1), 8 age classes. "
             f"Command: `{COMPARE_COMMAND}`.", "",
             "| recipe | settings | age exact | within one class | MAE years | gender |", "|---|---|---|---|---|---|"]
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "train-attributes defaults"
        lines.append(f"| {row['recipe']} | {settings} | {_percent(row['exact'])} | {_percent(row['within_one'])} | "
                     f"{row['mae_years']['mean']:.2f} ± {row['mae_years']['std']:.2f} | {_percent(row['gender'])} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- build


def train_recipe(root: Path, name: str, device: str = "auto", run_dir: Path = RUN_DIR) -> Path:
    """kface train-attributes with recipe ``name`` on every training family (into ``run_dir``/``name``);
    returns its model.pt."""
    run = run_dir / name
    run.mkdir(parents=True, exist_ok=True)
    manifest = run / "train-families.csv"
    training = korean_index(root, heldout=False)
    write_manifest(training, np.arange(len(training)), manifest)
    config = replace(recipe_config(name, root, run, device), dataset_options={"manifest": str(manifest)},
                     split=(0.9, 0.1, 0.0))
    return train_attributes(config, progress=True).model_path


def export_network(model_pt: Path, path: Path = NETWORK_FILE, name: str = SHIPPED_NAME,
                   made_by: str = BUILD_COMMAND) -> dict:
    """A train-attributes checkpoint with ``--unfreeze`` as one ONNX graph: aligned chips -> each task's
    probabilities side by side (:class:`~kface.attributes.heads.AttributeChipGraph`: the backbone's frozen
    prefix, the trained layers and heads, flip averaging inside), weights stored as float16; with the
    parity of the file against the PyTorch graph on seeded chips."""
    from ..attributes.heads import AttributeChipGraph, load_attribute_model
    from ..engines.export import check_parity, export_onnx, parity_chips

    model = load_attribute_model(model_pt)
    graph = AttributeChipGraph(inference_network(load_network(model.backbone)), model.cut, model.network,
                               model.tasks, flip=model.tta == "flip").eval()
    exported = export_onnx(graph, path, CHIP_SIZE, fp16=True, output_name=OUTPUT_NAME,
                           metadata={"kface_model": name, "made_by": made_by})
    exported["parity"] = check_parity(graph, path, parity_chips(CHIP_SIZE))
    return {"meta": model.meta, "export": exported}


def heldout_chips(root: Path, features, device: str = "auto") -> np.ndarray:
    """The aligned chips of ``features``' images (held-out faces), cut as ``analyze`` cuts them: today's
    default face stage, the whole image where no face is found."""
    index = korean_index(root, heldout=True)
    absolute = {path: str(index.absolute_path(i)) for i, path in enumerate(index.paths)}
    embedder = Embedder("dlib-torch", detector=BASE["detector"], fallback=BASE["fallback"], device=device,
                        progress=True)
    try:
        entries, _ = embedder.faces([absolute[path] for path in features.paths])
    finally:
        embedder.close()
    return np.stack([entry.chip for entry in entries])


def card_body(root: Path, target: BuildTarget, exported: dict) -> dict:
    """The card of an exported attribute network (its figures come after it is scored)."""
    meta = exported["meta"]
    return {
        "name": target.name, "description": "age group (8 Korean age classes, 0-6 ... 67-80) and gender from an "
        "aligned face chip: dlib's ResNet with its last stage and final layer trained for these tasks and one shared "
        "head, on Korean family-album faces from toddlers to grandparents",
        "file": target.network_file.name, "sha256": exported["export"]["sha256"],
        "size_bytes": exported["export"]["size_bytes"],
        "format": {"engine": "onnxruntime", "opset": exported["export"]["opset"],
                   "input": f"chips uint8 (N, {CHIP_SIZE}, {CHIP_SIZE}, 3): RGB faces aligned as every kface model "
                            f"reads them (dlib's 5-point alignment, padding 0.25)",
                   "output": (f"{OUTPUT_NAME} float32 (N, "
                              + " + ".join(str(len(meta["classes"][task])) for task in meta["tasks"])
                              + f"): {' then '.join(meta['tasks'])} probabilities"),
                   "weights": "float16, computed in float32", "parity": exported["export"]["parity"]},
        "meta": {key: meta[key] for key in ("tasks", "classes", "age_bins", "group_ages", "backbone", "face")}
                | {"input": "chips", "config": {"tta": "none"}},  # flip averaging happens inside the graph
        "recipe": {"name": SHIPPED_RECIPE, "flip_in_graph": meta["config"]["tta"] == "flip",
                   **{key: meta["config"][key] for key in (
                       "backbone", "unfreeze", "suffix_lr", "age_loss", "sampling", "trunk", "hidden", "dropout",
                       "epochs", "lr", "weight_decay", "batch_size", "split", "group_by", "seed")},
                   "best_epoch": meta["best_epoch"], "val": meta["val"]},
        "training": {"data": source_text(root), "held_out_families_file": HELDOUT_FILE.name,
                     "held_out_families_sha256": file_sha256(HELDOUT_FILE)},
        "made_by": target.made_by, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {**meta["versions"], "exported_with_kface": __version__, "python": platform.python_version()},
    }


def build(root: Path, device: str = "auto", candidate: Optional[str] = None) -> str:
    """Train (unless done) the shipped recipe, export it, score it on the held-out families and write the card;
    the shipped build also trains and scores the frozen recipes it replaced, a ``candidate`` build instead scores
    the shipped file on the same faces and says whether the candidate beats it (:data:`SHIP_RULE`)."""
    from ..attributes.heads import load_attribute_model
    check_root(root)
    target = build_target(root, candidate)
    models = {}
    for name in [SHIPPED_RECIPE] if target.candidate else dict.fromkeys([SHIPPED_RECIPE, *REPLACED_RECIPES]):
        model_pt = target.run_dir / name / "model.pt"
        models[name] = model_pt if model_pt.is_file() else train_recipe(root, name, device, target.run_dir)
    exported = export_network(models[SHIPPED_RECIPE], target.network_file, target.name, target.made_by)
    body = card_body(root, target, exported)
    write_text(target.card_file, json.dumps(body, indent=2) + "\n")
    shipped.attributes_card.cache_clear()
    built = ShippedAttributeModel(checked_card(target.card_file, "attribute model", "--model runs/NAME/model.pt"),
                                  target.network_file, device)
    # The held-out faces go through today's default face stage, as a user's photo does.
    heldout = recipe_features(root, SHIPPED_RECIPE, heldout=True, device=device)
    chips = heldout_chips(root, heldout, device)
    built_row = f"{SHIPPED_RECIPE} ({'candidate' if target.candidate else 'shipped'} file)"
    scored = {built_row: figures(built, heldout, built.chip_probabilities(chips)),
              f"{SHIPPED_RECIPE} (its PyTorch checkpoint)": figures(load_attribute_model(models[SHIPPED_RECIPE]),
                                                                    heldout)}
    body["figures"] = {"on": f"the {len(np.unique(heldout.groups))} held-out groups of related families "
                             f"({len(heldout.paths)} faces)",
                       "rows": scored}
    if target.candidate:
        today = ShippedAttributeModel(shipped.attributes_card(), NETWORK_FILE, device)
        scored[f"{SHIPPED_NAME} (shipped file)"] = figures(today, heldout, today.chip_probabilities(chips))
        body["figures"]["against_shipped"] = beats_shipped(scored[built_row], scored[f"{SHIPPED_NAME} (shipped file)"])
    else:
        frozen = korean_features(root, heldout=True, device=device, hog_policy="sized")
        for name in REPLACED_RECIPES:
            scored[REPLACED_RECIPES[name]] = figures(load_attribute_model(models[name]), frozen)
    write_text(target.card_file, json.dumps(body, indent=2) + "\n")
    write_json(target.report_dir / "heldout.json", body["figures"])
    write_text(target.report_dir / "heldout.md", heldout_markdown(body["figures"], target.made_by))
    verdict = ""
    if target.candidate:
        verdict = f"; {'beats' if body['figures']['against_shipped']['beats'] else 'does not beat'} {SHIPPED_NAME}"
    return (f"wrote {target.network_file} ({body['size_bytes'] / 2 ** 20:.1f} MiB), {target.card_file} and "
            f"{target.report_dir}/heldout.md{verdict}")


def beats_shipped(candidate: dict, today: dict) -> dict:
    """Each :data:`SHIP_RULE` figure of the candidate and of the shipped file on the same held-out faces, and
    whether the candidate is higher on every one (``beats``: the rule for replacing the shipped file)."""
    rows = {key: {"candidate": candidate[key], "shipped": today[key], "higher": candidate[key] > today[key]}
            for key in SHIP_RULE}
    return {"rule": f"higher on {', '.join(SHIP_RULE)}", "figures": rows,
            "beats": all(row["higher"] for row in rows.values())}


def heldout_markdown(figures_: dict, command: str = BUILD_COMMAND) -> str:
    lines = [f"On {figures_['on']}. Command: `{command}`.", "",
             "| model | age exact | within one class | MAE years (expected) | MAE years (class) | gender |",
             "|---|---|---|---|---|---|"]
    for name, entry in figures_["rows"].items():
        lines.append(f"| {name} | {100 * entry['exact']:.1f}% | {100 * entry['within_one']:.1f}% | "
                     f"{entry['mae_years']:.2f} | {entry['mae_years_group']:.2f} | {100 * entry['gender']:.1f}% |")
    against = figures_.get("against_shipped")
    if against:
        lines += ["", f"Against {SHIPPED_NAME} ({against['rule']}): " + "; ".join(
            f"{key} {100 * row['candidate']:.1f}% vs {100 * row['shipped']:.1f}%" for key, row in
            against["figures"].items()) + f": {'beats it' if against['beats'] else 'does not beat it'}."]
    for name, entry in figures_["rows"].items():
        lines += ["", f"Per age class, {name}:", "", "| class | n | exact | within one | MAE years | gender |",
                  "|---|---|---|---|---|---|"]
        for label, part in entry["per_class"].items():
            lines.append(f"| {label} | {part['n']} | {100 * part['exact']:.1f}% | {100 * part['within_one']:.1f}% | "
                         f"{part['mae_years']:.2f} | {100 * part['gender']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kface.build.attributes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["compare", "build"])
    parser.add_argument("--root", type=Path, required=True,
                        help="the korean_family folder, or one laid out like it (identities.csv and its images)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-folds", type=int, default=FOLDS, help="compare: run only the first N folds")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="compare: the recipes to score, comma-separated")
    parser.add_argument("--out", type=Path, default=REPORT_DIR, help="compare: the report folder")
    parser.add_argument("--candidate", metavar="NAME",
                        help="build: a candidate named apart (runs/attributes-NAME, "
                             "reports/attributes-candidate-NAME), scored against the shipped file; kface/models is "
                             "left untouched")
    args = parser.parse_args(argv)
    try:
        if args.step == "compare":
            unknown = sorted(set(args.recipes.split(",")) - set(RECIPES))
            if unknown:
                parser.error(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
            check_root(args.root)
            compare(args.root, args.device, out=args.out, max_folds=args.max_folds,
                    recipes=tuple(args.recipes.split(",")))
            print(f"wrote {args.out}/recipes.md")
        else:
            print(build(args.root, args.device, candidate=args.candidate))
    except KfaceError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
