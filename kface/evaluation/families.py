"""The family-disjoint k-fold verification protocol (``kface benchmark families``).

Korean family albums (and AI-Hub's family sets) hold relatives who look alike, so every split here is by
family: the families are shuffled with the seed and dealt into ``folds`` folds; each fold's pairs come
from its own families only. Two kinds of pair per fold:

- ``cross-age``: same-person pairs of two different age classes, different-person pairs drawn at random;
- ``same-age-hard``: same-person pairs within one age class, different-person pairs of the same gender
  and age class (the hard negatives a Korean verifier meets most).

A fixed model is scored on every fold at its own threshold (what ``kface verify`` answers with) and at
one chosen by ``rule`` on the other folds' pairs (what a user who measures on their own families gets).
A training recipe (a JSON of ``kface train`` settings) is trained once per fold on the other folds'
families (a tenth of them for val, which picks the epoch and the threshold) and scored on the held-out
fold at the threshold its own val chose. Every draw comes from ``SeedSequence(seed)``.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..api import load_verifier
from ..datasets import DatasetIndex, load_dataset
from ..embeddings.stored import with_stored_vectors
from ..errors import InputError
from ..metrics import accuracy_at, kfold_protocol, separation
from ..pairs import identity_groups
from ..util.hashing import file_sha256
from ..util.outputs import write_text

PAIR_KINDS = ("cross-age", "same-age-hard")
FAR_LEVEL = 1e-2  # 400 different pairs a fold measure down to about this


@dataclass(frozen=True)
class FamilyProtocol:
    """The protocol's settings, recorded in what it writes."""

    folds: int = 5
    pairs_per_class: int = 400  # same and different pairs of each kind, per fold
    seed: int = 0
    group_by: str = "family"
    age_column: str = "age_class"
    rule: str = "max-accuracy"
    scored_folds: Optional[int] = None  # a cut run: only the first N folds train and score (dealt as for all)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise InputError(f"--folds: the protocol needs at least 2 folds, got {self.folds}")
        if self.scored_folds is not None and not 1 <= self.scored_folds <= self.folds:
            raise InputError(f"--scored-folds: expected 1 to --folds ({self.folds}), got {self.scored_folds}")

    @property
    def scored(self) -> int:
        """How many folds (the first ones) are trained and scored."""
        return self.folds if self.scored_folds is None else self.scored_folds
        if self.pairs_per_class < 1:
            raise InputError(f"--pairs-per-class: expected 1 or more, got {self.pairs_per_class}")


@dataclass
class ProtocolPairs:
    """Pairs as index rows of the dataset, with label (1 same), kind and fold per pair."""

    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    folds: np.ndarray


def family_folds(index, protocol: FamilyProtocol) -> np.ndarray:
    """The fold of every image of ``index``: whole families dealt round-robin after a seeded shuffle."""
    per_identity = identity_groups(index, np.arange(len(index.identity_names)), protocol.group_by)
    groups = np.unique(per_identity)
    if len(groups) < protocol.folds:
        raise InputError(f"--folds {protocol.folds}: the data has only {len(groups)} {protocol.group_by} groups")
    rng = np.random.default_rng(np.random.SeedSequence(protocol.seed).spawn(1)[0])
    fold_of_group = np.empty(int(groups.max()) + 1, dtype=np.int64)
    fold_of_group[groups[rng.permutation(len(groups))]] = np.arange(len(groups)) % protocol.folds
    return fold_of_group[per_identity][index.identity_codes]


def protocol_pairs(index, image_folds: np.ndarray, protocol: FamilyProtocol) -> ProtocolPairs:
    """``pairs_per_class`` same and different pairs of each kind in each fold of ``image_folds`` (fewer
    where a fold has fewer candidates), drawn uniformly from every allowed pair of the fold's images."""
    ages = _column(index, protocol.age_column)
    genders = _column(index, "gender")
    identities = index.identity_codes
    fold_count = int(image_folds.max()) + 1
    streams = np.random.SeedSequence(protocol.seed).spawn(2)[1].spawn(fold_count * len(PAIR_KINDS))
    parts = []
    for fold in range(fold_count):
        rows = np.flatnonzero(image_folds == fold)
        a, b = np.triu_indices(len(rows), k=1)
        a, b = rows[a], rows[b]
        same_person = identities[a] == identities[b]
        same_age = ages[a] == ages[b]
        for number, kind in enumerate(PAIR_KINDS):
            rng = np.random.default_rng(streams[fold * len(PAIR_KINDS) + number])
            if kind == "cross-age":
                positive, negative = same_person & ~same_age, ~same_person
            else:
                positive = same_person & same_age
                negative = ~same_person & same_age & (genders[a] == genders[b])
            for label, allowed in ((1, positive), (0, negative)):
                candidates = np.flatnonzero(allowed)
                chosen = rng.choice(candidates, size=min(protocol.pairs_per_class, len(candidates)), replace=False)
                chosen.sort()
                parts.append((a[chosen], b[chosen], np.full(len(chosen), label), np.full(len(chosen), kind, object),
                              np.full(len(chosen), fold)))
    first, second, labels, kinds, folds = (np.concatenate(column) for column in zip(*parts))
    return ProtocolPairs(first, second, labels.astype(np.int64), kinds, folds.astype(np.int64))


def _column(index, name: str) -> np.ndarray:
    values = index.attributes.get(name)
    if values is None or any(value is None for value in values):
        raise InputError(f"the family protocol needs a {name!r} label on every image "
                         f"(the {index.kind} dataset's columns: {', '.join(sorted(index.attributes))})")
    return np.array([str(value) for value in values], dtype=object)


def score_fixed_model(verifier, index, pairs: ProtocolPairs, protocol: FamilyProtocol, name: str) -> dict:
    """One model on every fold: accuracy at its own threshold and at one chosen on the other folds."""
    distances = _pair_distances(verifier, index, pairs, np.arange(len(index)))
    return _summary(name, "model", distances, pairs, protocol, own_threshold=verifier.threshold,
                    threshold_source=verifier.threshold_source)


def score_recipe(recipe: dict, index, image_folds: np.ndarray, pairs: ProtocolPairs, protocol: FamilyProtocol,
                 name: str, out: Path, *, device: str = "auto", progress: bool = False,
                 log: Callable[[str], None] = lambda text: None) -> dict:
    """Train ``recipe`` once per fold on the other folds' families; score each fold with its own model at
    the threshold its val split chose."""
    from ..training.run import TrainConfig, train

    distances = np.full(len(pairs.labels), np.nan)
    thresholds = []
    for fold in range(protocol.scored):
        run = out / "runs" / name / f"fold{fold}"
        manifest = run.parent / f"fold{fold}-train.csv"
        run.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(index, np.flatnonzero(image_folds != fold), manifest)
        if not (run / "model.pt").is_file() or not (run / "done").is_file():
            settings = {"split": "0.9:0.1:0", "seed": protocol.seed, "device": device, **recipe,
                        "pairs": None, "out": str(run), "dataset": "csv", "root": str(index.root),
                        "manifest": str(manifest), "group_by": protocol.group_by}
            log(f"{name}: training fold {fold + 1}/{protocol.folds} into {run}")
            # An interrupted fold continues from its last epoch (training is seeded per epoch).
            train(TrainConfig.from_dict(settings), resume=(run / "last.pt").is_file(), progress=progress)
            write_text(run / "done", "trained\n")
        verifier = load_verifier(str(run / "model.pt"), detector=recipe.get("detector", "auto"),
                                 fallback="whole-image", device=device, progress=progress)
        held_out = pairs.folds == fold
        distances[held_out] = _pair_distances(verifier, index, _subset(pairs, held_out),
                                              np.flatnonzero(image_folds == fold))
        thresholds.append(verifier.threshold)
    return _summary(name, "recipe", distances, pairs, protocol, own_threshold=np.array(thresholds),
                    threshold_source="each fold's model: chosen on its own val families", recipe=recipe)


def write_manifest(index, rows: np.ndarray, path: Path) -> None:
    """A csv-adapter manifest (path,identity and every attribute column) of ``rows`` of ``index``."""
    columns = sorted(index.attributes)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "identity", *columns])
    for row in rows:
        writer.writerow([index.paths[row], index.identity_names[index.identity_codes[row]],
                         *["" if index.attributes[c][row] is None else index.attributes[c][row] for c in columns]])
    write_text(path, buffer.getvalue())


def _subset(pairs: ProtocolPairs, keep: np.ndarray) -> ProtocolPairs:
    return ProtocolPairs(pairs.first[keep], pairs.second[keep], pairs.labels[keep], pairs.kinds[keep],
                         pairs.folds[keep])


def _pair_distances(verifier, index, pairs: ProtocolPairs, rows: np.ndarray) -> np.ndarray:
    """The verifier's distance for each pair; every image the pairs use is embedded once."""
    used = np.unique(np.concatenate([pairs.first, pairs.second]))
    used = used[np.isin(used, rows)]
    vectors, result = verifier.embed([str(index.absolute_path(row)) for row in used], on_error="skip")
    if result.errors:
        first = next(iter(result.errors.values()))
        raise InputError(f"{len(result.errors)} images could not be embedded, e.g. {first}")
    position = np.full(len(index), -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    return verifier.distances(vectors[position[pairs.first]], vectors[position[pairs.second]])


def _summary(name: str, kind: str, distances: np.ndarray, pairs: ProtocolPairs, protocol: FamilyProtocol, *,
             own_threshold, threshold_source: str, recipe: Optional[dict] = None) -> dict:
    row: dict = {"name": name, "kind": kind, "threshold_source": threshold_source, "pair_kinds": {}}
    if recipe is not None:
        row["recipe"] = recipe
    for pair_kind in PAIR_KINDS:
        chosen = pairs.kinds == pair_kind
        d, labels, folds = distances[chosen], pairs.labels[chosen], pairs.folds[chosen]
        thresholds = np.broadcast_to(np.asarray(own_threshold, dtype=np.float64), (protocol.scored,))
        own = np.array([accuracy_at(d[folds == f], labels[folds == f], thresholds[f]) for f in range(protocol.scored)])
        entry = {"pairs": {"same": int(labels.sum()), "different": int((labels == 0).sum())},
                 "accuracy": float(own.mean()), "accuracy_std": float(own.std(ddof=1)) if len(own) > 1 else None,
                 "fold_accuracies": own.tolist()}
        if kind == "model":
            folded = kfold_protocol(d, labels, folds, rule=protocol.rule)
            entry["accuracy_folds_threshold"] = folded.mean_accuracy
            entry["accuracy_folds_threshold_std"] = folded.std_accuracy
            entry["fold_thresholds"] = [fold.threshold for fold in folded.folds]
        # Per fold, then averaged: a recipe's folds are different models, whose distances do not pool.
        measured = [separation(d[folds == f], labels[folds == f], far_levels=(FAR_LEVEL,)).to_dict()
                    for f in range(protocol.scored)]
        for key in measured[0]:
            values = [fold[key] for fold in measured
                      if isinstance(fold[key], (int, float)) and not isinstance(fold[key], bool) and np.isfinite(fold[key])]
            if not isinstance(measured[0][key], dict):
                entry[key] = float(np.mean(values)) if values else None
        row["pair_kinds"][pair_kind] = entry
    return row


def markdown_table(rows: list[dict], protocol: FamilyProtocol) -> str:
    """The protocol table (docs/korean-model.md): one line per row (a model at each of its thresholds, or a recipe)."""
    cut = "" if protocol.scored == protocol.folds else f" (a cut run: the first {protocol.scored} of its folds scored)"
    lines = [f"{protocol.folds}-fold family-disjoint protocol{cut} ({protocol.pairs_per_class} same + "
             f"{protocol.pairs_per_class} different pairs of each kind per fold, seed {protocol.seed}); "
             f"accuracy mean ± std over folds; AUC, EER and overlap are means of the per-fold figures.", "",
             "| model | threshold | cross-age accuracy | same-age hard accuracy | AUC (cross / hard) "
             "| EER (cross / hard) | TAR@FAR=1e-2 (cross / hard) | overlap (cross / hard) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cross, hard = (row["pair_kinds"][kind] for kind in PAIR_KINDS)
        variants = [("own", "accuracy", "accuracy_std")]
        if row["kind"] == "model":
            variants.append(("other folds", "accuracy_folds_threshold", "accuracy_folds_threshold_std"))
        for label, key, std in variants:
            source = row["threshold_source"] if label == "own" else f"chosen on the other folds ({protocol.rule})"
            lines.append(f"| {row['name']} | {source} | {_mean_std(cross[key], cross[std])} | "
                         f"{_mean_std(hard[key], hard[std])} | {_number(cross['auc'])} / "
                         f"{_number(hard['auc'])} | {_percent(cross['eer'])} / {_percent(hard['eer'])} | "
                         f"{_percent(cross.get(TAR_KEY))} / {_percent(hard.get(TAR_KEY))} | "
                         f"{_number(cross['overlap'], 3)} / {_number(hard['overlap'], 3)} |")
    return "\n".join(lines) + "\n"


TAR_KEY = "tar_at_far_1e-2"


def _mean_std(mean: float, std: Optional[float]) -> str:
    """``89.40% ± 1.17`` (points); the mean alone where one fold was scored."""
    return f"{100 * mean:.2f}%" + ("" if std is None else f" ± {100 * std:.2f}")


def _percent(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _number(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_results(out: Path, rows: list[dict], protocol: FamilyProtocol, dataset: dict) -> None:
    """``benchmark.json`` (every figure, the settings, the data) and ``benchmark.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    body = {"protocol": asdict(protocol), "dataset": dataset, "rows": rows}
    write_text(out / "benchmark.json", json.dumps(body, indent=2) + "\n")
    write_text(out / "benchmark.md", markdown_table(rows, protocol))


def distinct_images(index, rows: np.ndarray, group_by: str) -> tuple:
    """An index of ``rows`` of ``index`` in which every image is one person's, once.

    Album sets file one scan under several identities: a grandmother shared by two families appears
    under both family numbers, with the same photos. Such identities are one person here (merged, and
    their groups merged with them, so no split or fold holds the same face twice); repeated copies are
    kept once; images whose bytes are also outside ``rows`` (e.g. in a model's training families) are
    left out. Returns the new index and what was done, counted.
    """
    digests = [file_sha256(index.absolute_path(row)) for row in range(len(index))]
    chosen = set(rows.tolist())
    outside = {digests[row] for row in range(len(index)) if row not in chosen}
    kept = [int(row) for row in rows if digests[row] not in outside]
    identity = _merged(kept, digests, index.identity_codes)
    groups = index.attributes.get(group_by)
    names = {code: index.identity_names[code] for code in set(identity.values())}
    if groups is not None:
        group_of_identity = _merged_groups(kept, identity, groups)
    seen: set = set()
    records, repeated = [], 0
    for row in kept:
        key = (identity[row], digests[row])
        if key in seen:
            repeated += 1
            continue
        seen.add(key)
        record = index.record(row)
        attributes = dict(record.attributes)
        if groups is not None:
            attributes[group_by] = group_of_identity[identity[row]]
        records.append(replace(record, identity=names[identity[row]], attributes=attributes))
    merged_identities = len({int(index.identity_codes[row]) for row in kept}) - len(set(identity.values()))
    counts = {"also_outside": len(rows) - len(kept), "repeated": repeated, "identities_merged": merged_identities}
    return DatasetIndex.from_records(index.kind, index.root, records, index.problems, index.options,
                                     index.conditions), counts


def _merged(rows: list[int], digests: list[str], codes: np.ndarray) -> dict[int, int]:
    """Row -> identity code, identities that share any image joined (union-find, smallest code wins)."""
    parent: dict[int, int] = {}

    def find(code: int) -> int:
        while parent.setdefault(code, code) != code:
            parent[code] = parent[parent[code]]
            code = parent[code]
        return code

    first_owner: dict[str, int] = {}
    for row in rows:
        code = int(codes[row])
        other = first_owner.setdefault(digests[row], code)
        a, b = find(code), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {row: find(int(codes[row])) for row in rows}


def _merged_groups(rows: list[int], identity: dict[int, int], groups: list) -> dict[int, str]:
    """Merged identity -> its group name: groups joined by a shared person become one ("F1+F2")."""
    members: dict[int, set] = {}
    for row in rows:
        members.setdefault(identity[row], set()).add(groups[row])
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for names in members.values():
        first, *rest = sorted(names)
        find(first)
        for name in rest:
            a, b = find(first), find(name)
            if a != b:
                parent[max(a, b)] = min(a, b)
    joined: dict[str, set] = {}
    for name in list(parent):
        joined.setdefault(find(name), set()).add(name)
    label = {root: "+".join(sorted(names)) for root, names in joined.items()}
    return {code: label[find(next(iter(names)))] for code, names in members.items()}


def subset_index(index, rows: np.ndarray):
    """A new index of ``rows`` of ``index``."""
    return DatasetIndex.from_records(index.kind, index.root, (index.record(int(i)) for i in rows),
                                     index.problems, index.options, index.conditions)


def group_rows(index, column: str, keep: Optional[set[str]] = None, drop: Optional[set[str]] = None) -> np.ndarray:
    """The rows of ``index`` whose ``column`` is in ``keep`` (when given) and not in ``drop``."""
    values = index.attributes.get(column)
    if values is None:
        raise InputError(f"the {index.kind} dataset has no {column!r} column")
    rows = [i for i, value in enumerate(values) if (keep is None or value in keep) and not (drop and value in drop)]
    if not rows:
        raise InputError(f"no image is left after choosing {column} groups")
    return np.array(rows, dtype=np.int64)


def restrict_groups(index, column: str, keep: Optional[set[str]] = None, drop: Optional[set[str]] = None):
    """``index`` limited to images whose ``column`` is in ``keep`` (when given) and not in ``drop``."""
    return subset_index(index, group_rows(index, column, keep, drop))


def read_group_list(path: os.PathLike) -> set[str]:
    """Group names, one per line (``#`` starts a comment). A line ``F1+F2`` (groups joined by a shared
    person, as :func:`distinct_images` names them) stands for each of its parts."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the group list ({exc.strerror})") from None
    names = {part.strip() for line in lines for part in line.split("#", 1)[0].split("+")} - {""}
    if not names:
        raise InputError(f"{path}: the group list names no group")
    return names


def run_benchmark(kind: str, root: str, layout_options: dict, *, group_by: str = "family",
                  groups_file: Optional[str] = None, exclude_file: Optional[str] = None,
                  added_file: Optional[str] = None, folds: int = 5, scored_folds: Optional[int] = None,
                  pairs_per_class: int = 400, age_column: str = "age_class", models=(), recipes=(),
                  rule: str = "max-accuracy", seed: int = 0, out: Path, device: str = "auto", cache: bool = True,
                  distinct: bool = True, embeddings: Optional[str] = None,
                  progress: bool = False, log: Callable[[str], None] = lambda text: None) -> list[dict]:
    """The whole protocol for ``models`` (names or checkpoint paths) and ``recipes`` (JSON files); writes
    ``out/benchmark.json`` and ``out/benchmark.md`` after every row, and returns the rows.

    With ``distinct`` (the default) copied images are left out first (:func:`distinct_images`), so no
    fold, and no held-out group, shares an image with another.

    ``added_file`` lists groups that are training data only (:func:`split_added`): the folds and pairs are
    the other groups' alone, as without them, and each recipe is scored twice on those same pairs, trained
    without the added groups and with them (row ``NAME+added``): what the added families are worth.
    ``embeddings``: a Parquet embedding dataset whose vectors (of each model's key) replace the network's."""
    if not models and not recipes:
        raise InputError("give at least one --model or --recipe to score")
    if models and scored_folds == 1:
        raise InputError("--scored-folds 1: a --model's threshold is chosen on the other scored folds; score 2 or more")
    recipe_settings = [(Path(path).stem, _read_recipe(path)) for path in recipes]
    protocol = FamilyProtocol(folds, pairs_per_class, seed, group_by, age_column, rule, scored_folds)
    index = load_dataset(kind, root, progress=progress, **{k: v for k, v in layout_options.items() if v is not None})
    rows = np.arange(len(index))
    if groups_file or exclude_file:
        values = index.attributes.get(group_by) or [None] * len(index)
        keep = read_group_list(groups_file) if groups_file else None
        drop = read_group_list(exclude_file) if exclude_file else set()
        rows = np.array([i for i, value in enumerate(values) if (keep is None or value in keep) and value not in drop],
                        dtype=np.int64)
    copies = None
    if distinct:
        index, copies = distinct_images(index, rows, group_by)
        log(f"copied images: {copies}")
    else:
        index = subset_index(index, rows)
    scored, added = index, None
    if added_file:
        scored_rows, added_rows = split_added(index, group_by, read_group_list(added_file))
        scored, added = subset_index(index, scored_rows), subset_index(index, added_rows)
    image_folds = family_folds(scored, protocol)
    pairs = protocol_pairs(scored, image_folds, protocol)
    pairs = _subset(pairs, pairs.folds < protocol.scored)
    dataset = {"kind": kind, "root": str(root), "images": len(scored), "identities": len(scored.identity_names),
               "groups_file": groups_file, "exclude_groups": exclude_file, "copies_left_out": copies}
    if added is not None:
        dataset["added"] = {"groups_file": added_file, "images": len(added), "identities": len(added.identity_names),
                            "groups": len(set(added.attributes[group_by]))}
    rows: list[dict] = []
    for name in models:
        log(f"scoring model {name}")
        verifier = load_verifier(name, detector="auto", fallback="whole-image", device=device, cache=cache,
                                 progress=progress)
        rows.append(score_fixed_model(with_stored_vectors(verifier, embeddings), scored, pairs, protocol, name))
        write_results(out, rows, protocol, dataset)
    variants = [(scored, image_folds, "")]
    if added is not None:
        # The added images go after the scored ones, so the pairs' rows stay valid; fold -1: never scored,
        # trained on by every fold's model.
        variants.append((subset_index(index, np.r_[scored_rows, added_rows]),
                         np.r_[image_folds, np.full(len(added), -1, dtype=np.int64)], "+added"))
    for name, recipe in recipe_settings:
        for data, data_folds, suffix in variants:
            rows.append(score_recipe(recipe, data, data_folds, pairs, protocol, name + suffix, out, device=device,
                                     progress=progress, log=log))
            write_results(out, rows, protocol, dataset)
    return rows


def split_added(index, group_by: str, listed: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of ``index`` outside the ``listed`` groups, the rows in them): the groups a protocol run adds
    to every fold's training only. A merged group (``F1+F2``) is added when all its parts are listed; one
    listed only in part would put a person on both sides, an input error."""
    groups = index.attributes.get(group_by)
    if groups is None:
        raise InputError(f"the {index.kind} dataset has no {group_by!r} column")
    straddling = sorted({group for group in groups if "+" in group
                         and 0 < sum(part in listed for part in group.split("+")) < len(group.split("+"))})
    if straddling:
        raise InputError(f"--add-groups: {', '.join(straddling)} share a person with groups not listed; "
                         f"list every part or none")
    is_added = np.array([group.split("+")[0] in listed for group in groups], dtype=bool)
    if not is_added.any():
        raise InputError("--add-groups: none of the listed groups is in the data")
    if is_added.all():
        raise InputError("--add-groups: every group is listed; nothing is left to score")
    return np.flatnonzero(~is_added), np.flatnonzero(is_added)


def _read_recipe(path: str) -> dict:
    try:
        recipe = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable recipe JSON ({exc})") from None
    if not isinstance(recipe, dict):
        raise InputError(f"{path}: a recipe is a JSON object of kface train settings")
    reserved = {"pairs", "out", "dataset", "root", "manifest", "group_by"} & set(recipe)
    if reserved:
        raise InputError(f"{path}: the protocol sets {', '.join(sorted(reserved))} itself; remove them")
    return recipe
