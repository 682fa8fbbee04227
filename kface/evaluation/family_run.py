"""The driver of ``kface benchmark families``: the data, the folds and pairs, every model and recipe scored."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np

from ..datasets import EDITED_COLUMN, DatasetIndex
from ..embeddings.stored import with_stored_vectors
from ..errors import InputError
from ..util.cache import CacheSetting
from .families import FamilyProtocol, ProtocolPairs, _subset, family_folds, protocol_pairs
from .family_scoring import FoldJob, FoldResult, recipe_jobs, recipe_row, run_fold, score_fixed_model
from .family_tables import write_results
from .groups import distinct_images, load_index, read_group_list, split_added, split_edited, subset_index
from .scoring import score_models

#: Runs recipe rows' fold jobs: given every row's jobs, gives back each row's results, row by row in order.
FoldRunner = Callable[[list[list[FoldJob]]], Iterable[list[FoldResult]]]


def run_benchmark(kind: str, root: str, layout_options: dict, *, group_by: str = "family",
                  groups_file: Optional[str] = None, exclude_file: Optional[str] = None,
                  added_file: Optional[str] = None, folds: int = 5, scored_folds: Optional[int] = None,
                  pairs_per_class: int = 400, age_column: str = "age_class", models=(), recipes=(),
                  rule: str = "max-accuracy", seed: int = 0, out: Path, device: str = "auto",
                  cache: Union[bool, CacheSetting] = True,
                  distinct: bool = True, embeddings: Optional[str] = None,
                  progress: bool = False, log: Callable[[str], None] = lambda text: None,
                  fold_runner: Optional[FoldRunner] = None) -> list[dict]:
    """The whole protocol for ``models`` (names or checkpoint paths) and ``recipes`` (JSON files); writes
    ``out/benchmark.json`` and ``out/benchmark.md`` after every row, and returns the rows.

    With ``distinct`` (the default) copied images are left out first (:func:`distinct_images`), so no
    fold, and no held-out group, shares an image with another.

    ``added_file`` lists groups that are training data only (:func:`split_added`): the folds and pairs are
    the other groups' alone, as without them, and each recipe is scored twice on those same pairs, trained
    without the added groups and with them (row ``NAME+added``): what the added families are worth.
    ``embeddings``: a Parquet embedding dataset whose vectors (of each model's key) replace the network's.
    ``fold_runner`` runs the recipes' fold jobs elsewhere (e.g. as Ray tasks, :mod:`kface.scale.families`);
    by default they run here, one after the other."""
    if not models and not recipes:
        raise InputError("give at least one --model or --recipe to score")
    if models and scored_folds == 1:
        raise InputError("--scored-folds 1: a --model's threshold is chosen on the other scored folds; score 2 or more")
    recipe_settings = [(Path(path).stem, _read_recipe(path)) for path in recipes]
    protocol = FamilyProtocol(folds, pairs_per_class, seed, group_by, age_column, rule, scored_folds)
    data = prepare_data(kind, root, layout_options, protocol, groups_file=groups_file, exclude_file=exclude_file,
                        added_file=added_file, distinct=distinct, progress=progress, log=log)
    row_jobs = [recipe_jobs(recipe, index, image_folds, data.pairs, protocol, name + suffix, out, device, cache)
                for name, recipe in recipe_settings for index, image_folds, suffix in data.variants]
    # Started before the models are scored (a runner on a cluster works meanwhile); here, lazily, one by one.
    row_results = fold_runner(row_jobs) if fold_runner else run_here(row_jobs, progress=progress, log=log)
    rows = score_models(models, lambda verifier, name: score_fixed_model(with_stored_vectors(verifier, embeddings),
                                                                         data.scored, data.pairs, protocol, name),
                        lambda rows: write_results(out, rows, protocol, data.dataset), device=device, cache=cache,
                        progress=progress, log=log)
    for jobs, results in zip(row_jobs, row_results):
        rows.append(recipe_row(jobs, results, data.pairs))
        write_results(out, rows, protocol, data.dataset)
    return rows


def run_here(row_jobs: list[list[FoldJob]], *, progress: bool = False,
             log: Callable[[str], None] = lambda text: None) -> Iterator[list[FoldResult]]:
    """The fold jobs in this process, one after the other, each row's as it is asked for."""
    for jobs in row_jobs:
        yield [run_fold(job, progress=progress, log=log) for job in jobs]


@dataclass
class ProtocolData:
    """What a protocol run scores: the images (``scored``), their folds and pairs, what to record of the data,
    and the training data of each recipe row (``variants``: index, folds, row-name suffix)."""

    scored: DatasetIndex
    image_folds: np.ndarray
    pairs: ProtocolPairs
    dataset: dict
    variants: list[tuple[DatasetIndex, np.ndarray, str]]


def prepare_data(kind: str, root: str, layout_options: dict, protocol: FamilyProtocol, *,
                 groups_file: Optional[str], exclude_file: Optional[str], added_file: Optional[str],
                 distinct: bool, progress: bool, log: Callable[[str], None]) -> ProtocolData:
    """The dataset read and chosen (group lists, copies left out, added groups split off), dealt into folds
    and paired (:func:`run_benchmark` says how)."""
    group_by = protocol.group_by
    index = load_index(kind, root, layout_options, progress)
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
    real_rows, edited_rows = split_edited(index)
    scored_rows, added_rows = real_rows, np.zeros(0, dtype=np.int64)
    if added_file:
        scored_rows, added_rows = split_added(index, group_by, read_group_list(added_file))
        scored_rows, added_rows = np.intersect1d(scored_rows, real_rows), np.intersect1d(added_rows, real_rows)
    scored = subset_index(index, scored_rows)
    added = subset_index(index, added_rows) if added_file else None
    image_folds = family_folds(scored, protocol)
    pairs = protocol_pairs(scored, image_folds, protocol)
    pairs = _subset(pairs, pairs.folds < protocol.scored)
    dataset = {"kind": kind, "root": str(root), "images": len(scored), "identities": len(scored.identity_names),
               "groups_file": groups_file, "exclude_groups": exclude_file, "copies_left_out": copies}
    variants = [(scored, image_folds, "")]
    if added is not None:
        dataset["added"] = {"groups_file": added_file, "images": len(added), "identities": len(added.identity_names),
                            "groups": len(set(added.attributes[group_by]))}
        # The added images go after the scored ones (in that order, whatever their paths), so the pairs' rows
        # stay valid; fold -1: never scored, trained on by every fold's model.
        variants.append((subset_index(index, np.r_[scored_rows, added_rows], keep_order=True),
                         np.r_[image_folds, np.full(len(added), -1, dtype=np.int64)], "+added"))
    if len(edited_rows):
        # An edited photo trains only the folds its person trains in (fold -1 with an added person), and is
        # never scored: each fold's model never sees an edit of a face it is tested on.
        fold_of = {scored.identity_names[code]: fold for code, fold in zip(scored.identity_codes, image_folds)}
        fold_of.update({name: -1 for name in (added.identity_names if added is not None else [])})
        names = [index.identity_names[index.identity_codes[row]] for row in edited_rows]
        kept = np.array([name in fold_of for name in names], dtype=bool)
        edited_folds = np.array([fold_of[name] for name, keep in zip(names, kept) if keep], dtype=np.int64)
        _, base_folds, suffix = variants[-1]
        dataset["edited"] = {"column": EDITED_COLUMN, "images": int(kept.sum()), "left_out": int((~kept).sum())}
        variants.append((subset_index(index, np.r_[scored_rows, added_rows, edited_rows[kept]], keep_order=True),
                         np.r_[base_folds, edited_folds], suffix + "+edited"))
    return ProtocolData(scored, image_folds, pairs, dataset, variants)


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
