"""The evaluation commands: ``kface overlap-report`` and the ``kface benchmark`` group (lfw, families)."""
from __future__ import annotations

from pathlib import Path

import click

from .. import toolkit
from ..embeddings.stored import with_stored_vectors
from ..evaluation.report import check_save_threshold, report_verifier, save_report_threshold
from ..evaluation.report import overlap_report as run
from ..scale.families import ray_fold_runner
from .names import IDENTITY_DATASETS
from .options import (
    LazyGroup,
    backbone_option,
    command_line,
    common_options,
    dataset_options,
    detector_options,
    device_option,
    engine_option,
    handle_errors,
    json_option,
    model_option,
    print_json,
    setup_logging,
)


@click.command("overlap-report")
@click.option("--pairs", "pairs_file", required=True, type=click.Path(dir_okay=False),
              help="Pair file (make-pairs); the threshold is chosen on its val split, the numbers come from --split.")
@model_option
@backbone_option
@click.option("--weights", type=click.Path(dir_okay=False), help="Local weights file (facenet backbones).")
@detector_options(default="auto", fallback="whole-image")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="The split every reported number is measured on.")
@click.option("--val-split", default="val", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="The split the threshold is chosen on (never the one scored).")
@click.option("--rule", default="intersection", show_default=True,
              help="Threshold rule on the val split: intersection (the study's), max-accuracy, eer or far=X.")
@click.option("--samples", default="400", show_default=True,
              help="Pairs per class drawn from each split (the study used 400), or 'all'.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-class draws.")
@click.option("--threshold", type=float,
              help="Use this threshold instead of choosing one (needed when the pair file has no val split "
                   "and the backbone has no threshold of its own).")
@click.option("--save-threshold", is_flag=True,
              help="Write the threshold chosen on val into --model, so kface verify uses it.")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset root for the pair file's relative paths.")
@click.option("--attributes-dataset",
              help="Dataset kind whose labels (gender, age, lighting, accessory, pose) group the pairs in the "
                   "subgroup table, e.g. lfw-gender [default: the pair manifest's dataset].")
@click.option("--attributes-root", type=click.Path(file_okay=False), help="That dataset's root folder.")
@click.option("--embeddings", type=click.Path(),
              help="A Parquet embedding dataset (kface embed --out NAME.parquet): its vectors of the model's key are "
                   "used instead of running the network on those images.")
@device_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Report folder: metrics.json, distributions.png, roc.png, report.md.")
@json_option("Print metrics.json's content on stdout.")
@common_options
@click.pass_context
@handle_errors
def overlap_report(ctx, pairs_file, model, backbone, weights, detector, fallback, max_pixels, split, val_split, rule,
                   samples, seed, threshold, save_threshold, root, attributes_dataset, attributes_root, embeddings,
                   device, out, as_json, quiet, cache):
    """Accuracy, loss, AUC, EER, TAR@FAR and the overlap area of a model on a pair file, with plots.

    The threshold is chosen on the val split and every number is measured on the test split.
    Example: kface overlap-report --pairs pairs/lfw-4to6.csv --out reports/lfw-base
    """
    setup_logging(quiet)
    if save_threshold:
        check_save_threshold(model, threshold)
    verifier = report_verifier(model, backbone=backbone, detector=detector, fallback=fallback, device=device,
                               weights=weights, cache=cache, progress=not quiet, max_pixels=max_pixels)
    verifier = with_stored_vectors(verifier, embeddings)
    body = run(pairs_file, verifier, split=split, val_split=val_split, rule=rule, samples=samples, seed=seed,
               out_dir=out, root=root, threshold=threshold, attributes_dataset=attributes_dataset,
               attributes_root=attributes_root, command=command_line(ctx), progress=not quiet)
    if save_threshold:
        body["saved_threshold"] = save_report_threshold(model, body)
    if as_json:
        print_json(body)
        return
    where = f"chosen on {body['threshold_chosen_on']}" if body["threshold_chosen_on"] else "not chosen here"
    loss = f", loss {body['loss']:.4f}" if body["loss"] is not None else ""
    overlap = "—" if body["overlap"] is None else f"{body['overlap']:.4f}"
    click.echo(f"{split} split ({body['n_same']} same / {body['n_diff']} different pairs): accuracy "
               f"{100 * body['accuracy']:.2f}% at threshold {body['threshold']:.4f} ({body['rule']}, {where}){loss}, "
               f"AUC {body['auc']:.4f}, EER {100 * body['eer']:.2f}%, overlap {overlap} "
               f"(histogram {body['overlap_histogram']:.4f}); wrote {out}/")
    if save_threshold:
        click.echo(f"saved threshold {body['threshold']:.4f} into {model}", err=True)


@click.group(cls=LazyGroup, lazy={"identification": "kface.cli.gallery:benchmark_identification"})
def benchmark() -> None:
    """Standard benchmarks with their official protocols."""


@benchmark.command("lfw")
@click.option("--lfw-dir", required=True, type=click.Path(file_okay=False),
              help="LFW folder: images/<Name>/<Name>_NNNN.jpg (or <Name>/ directly) and pairs.txt.")
@click.option("--pairs-file", type=click.Path(dir_okay=False), help="View-2 pairs file (default: LFW_DIR/pairs.txt).")
@model_option
@backbone_option
@detector_options(fallback="whole-image")
@click.option("--rule", default="max-accuracy", show_default=True,
              help="Threshold rule on the nine training folds: max-accuracy, intersection, eer, far=X.")
@engine_option
@device_option
@json_option()
@common_options
@handle_errors
def benchmark_lfw(lfw_dir, pairs_file, model, backbone, detector, fallback, max_pixels, rule, engine, device, as_json,
                  quiet, cache):
    """LFW View-2: 10-fold accuracy (mean ± std), AUC, EER, overlap, and the all-folds threshold."""
    setup_logging(quiet)
    result = toolkit.benchmark_lfw(lfw_dir, model=model, backbone=backbone, pairs_file=pairs_file, rule=rule,
                                   detector=detector,
                                   fallback=fallback, engine=engine, device=device, cache=cache, progress=not quiet,
                                   max_pixels=max_pixels)
    if as_json:
        print_json(result)
        return
    click.echo(f"LFW View-2 ({result['pairs']} pairs, {result['backbone']}, detector {result['detector']}): "
               f"accuracy {100 * result['accuracy']:.2f}% ± {100 * result['accuracy_std']:.2f}, "
               f"AUC {result['auc']:.4f}, EER {100 * result['eer']:.2f}%, overlap {result['overlap']:.4f}, "
               f"threshold (all folds, {rule}) {result['threshold_all_folds']:.4f}")


@benchmark.command("families")
@dataset_options(IDENTITY_DATASETS)
@click.option("--group-by", default="family", show_default=True, metavar="COLUMN",
              help="The column whose groups (families) the folds are made of.")
@click.option("--groups", "groups_file", type=click.Path(dir_okay=False),
              help="Use only the groups listed in this file (one per line), e.g. a model's held-out families.")
@click.option("--exclude-groups", type=click.Path(dir_okay=False),
              help="Leave out the groups listed in this file.")
@click.option("--add-groups", type=click.Path(dir_okay=False),
              help="Groups (listed in this file) that are training data only: the folds and pairs are the other "
                   "groups', and each recipe is also scored trained with them added (row NAME+added).")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--scored-folds", type=click.IntRange(1),
              help="A cut run: train and score only the first N folds (dealt as for --folds; the table says so).")
@click.option("--pairs-per-class", type=click.IntRange(1), default=400, show_default=True,
              help="Same and different pairs of each kind per fold.")
@click.option("--age-column", default="age_class", show_default=True,
              help="The age label that defines same-age pairs.")
@click.option("--keep-copies", is_flag=True,
              help="Keep images whose bytes are filed under two identities or outside the chosen groups "
                   "(left out by default: a copy on both sides of a split measures nothing).")
@click.option("--model", "models", multiple=True,
              help="A model to score (a shipped name such as korean or dlib, or runs/NAME/model.pt); repeatable.")
@click.option("--recipe", "recipes", multiple=True, type=click.Path(dir_okay=False),
              help="A JSON file of kface train settings, trained and scored once per fold; repeatable.")
@click.option("--rule", default="max-accuracy", show_default=True,
              help="Threshold rule on the other folds (fixed models): max-accuracy, intersection, eer, far=X.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the folds and the pairs.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for benchmark.json, benchmark.md and each recipe's per-fold runs.")
@click.option("--embeddings", type=click.Path(),
              help="A Parquet embedding dataset (kface embed --out NAME.parquet): its vectors of the model's key are "
                   "used instead of running the network on those images.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Train and score each recipe's folds as Ray tasks: local (Ray on this machine's cores), auto "
                   "(the cluster this machine belongs to) or ray://HOST:PORT. The same tables as without.")
@device_option
@json_option("Print benchmark.json's rows on stdout.")
@common_options
@handle_errors
def benchmark_families(dataset, root, layout_options, group_by, groups_file, exclude_groups, add_groups, folds,
                       scored_folds, pairs_per_class, age_column, keep_copies, models, recipes, rule, seed, out,
                       embeddings, ray_address, device, as_json, quiet, cache):
    """Family-disjoint k-fold verification: pairs across ages and same-age same-gender hard pairs.

    Example: kface benchmark families --dataset csv --root korean_family --manifest
    korean_family/identities.csv --model dlib --recipe my-recipe.json --out reports/korean
    """
    setup_logging(quiet)
    log = (lambda text: None) if quiet else (lambda text: click.echo(f"note: {text}", err=True))
    fold_runner = ray_fold_runner(ray_address, quiet=quiet, log=log) if ray_address else None
    rows = toolkit.benchmark_families(dataset, root, layout_options=layout_options, out=out, group_by=group_by,
                                      groups_file=groups_file, exclude_file=exclude_groups, added_file=add_groups,
                                      folds=folds, scored_folds=scored_folds, pairs_per_class=pairs_per_class,
                                      age_column=age_column, models=models, recipes=recipes, rule=rule, seed=seed,
                                      device=device, cache=cache, progress=not quiet, distinct=not keep_copies,
                                      embeddings=embeddings, fold_runner=fold_runner, log=log)
    if as_json:
        print_json({"out": out, "rows": rows})
    elif not quiet:
        click.echo(Path(out, "benchmark.md").read_text(encoding="utf-8"), nl=False)
