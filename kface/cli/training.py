"""The training commands: ``kface make-pairs``, ``kface train``, ``kface sweep`` and ``kface train-attributes``."""
from __future__ import annotations

import os
import sys

import click

from ..attributes.labels import AttributeConfig, parse_age_bins
from ..attributes.train import train_attributes as run
from ..datasets import dataset_options as checked_dataset_options
from ..evaluation.sweep import run_sweep, sweep_config
from ..pairs import parse_ratio, parse_split
from ..toolkit import make_pairs as sample_pairs
from ..training.store import FeatureStore
from ..training.stored import import_stored_vectors
from .names import ATTRIBUTE_DATASETS, DISTANCE_NAMES, IDENTITY_DATASETS, PAIR_SOURCE_DATASETS, UNFREEZE_NAMES
from .options import (
    backbone_option,
    cache_options,
    command_line,
    common_options,
    dataset_options,
    detector_options,
    device_option,
    handle_errors,
    json_option,
    print_json,
    setup_logging,
)


@click.command("make-pairs")
@dataset_options(PAIR_SOURCE_DATASETS)
@click.option("--ratio", required=True,
              help="Different:same pairs in every split, e.g. 4:6 (40% different-person), or the fraction "
                   "of different-person pairs, e.g. 0.4.")
@click.option("--pairs", "pair_count", required=True, type=int, help="Pairs in total, over all splits.")
@click.option("--split", default="0.8:0.1:0.1", show_default=True,
              help="train:val:test shares of identities and pairs; no identity is in two splits.")
@click.option("--images-per-identity", type=int,
              help="Use exactly K images of each identity (seeded, spread over the layout's conditions); "
                   "identities with fewer are left out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
@click.option("--hard-negatives", is_flag=True,
              help="Different-person pairs of the same gender and age band (needs those labels).")
@click.option("--group-by", metavar="COLUMN",
              help="Keep each group of identities (a dataset column, e.g. family) in one split, so related "
                   "people never straddle train and val/test.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Pair CSV to write [default: pairs/<dataset>-<N>-<P>-seed<S>.csv]; the manifest goes "
                   "beside it as .json.")
@json_option("Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, warnings or notes.")
@handle_errors
def make_pairs(dataset, root, layout_options, ratio, pair_count, split, images_per_identity, seed, hard_negatives,
               group_by, out, as_json, quiet):
    """Sample verification pairs from a dataset into a pair CSV and its JSON manifest.

    Example: kface make-pairs --dataset kface --root K-Face/High --cameras frontal --ratio 4:6
    --pairs 2000 --images-per-identity 5
    """
    setup_logging(quiet)
    made = sample_pairs(dataset, root, ratio=ratio, pairs=pair_count, split=split,
                        images_per_identity=images_per_identity, seed=seed, hard_negatives=hard_negatives,
                        group_by=group_by, out=out, progress=not quiet, **layout_options)
    if not quiet:
        for line in made.problems.lines():
            click.echo(f"warning: {line}", err=True)
    pairs, out_path, manifest_path = made.pairs, made.path, made.manifest
    counts = pairs.counts()
    if as_json:
        print_json({"out": str(out_path), "manifest": str(manifest_path), "pairs": len(pairs),
                    "ratio": str(parse_ratio(ratio)), "seed": seed, "counts": counts,
                    "problems": made.problems.to_dict()})
    elif not quiet:
        shown = ", ".join(f"{name} {c['different']}/{c['same']}" for name, c in counts.items())
        click.echo(f"wrote {len(pairs)} pairs (different/same: {shown}) to {out_path} and {manifest_path}", err=True)


@click.command()
@click.option("--pairs", type=click.Path(dir_okay=False),
              help="Pair file from make-pairs (its train and val splits); or train from --dataset/--root.")
@click.option("--root", type=click.Path(file_okay=False),
              help="With --dataset: the dataset's root; with --pairs: the root its relative paths resolve against.")
@click.option("--dataset", type=click.Choice(IDENTITY_DATASETS),
              help="Train from a dataset instead of a pair file: identity-disjoint train/val/test pairs are "
                   "sampled into OUT/pairs.csv, and --loss metric|arcface uses every image of the train identities.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="--dataset csv: the manifest (path,identity,...).")
@click.option("--dataset-pairs", type=int, default=None,
              help="--dataset: pairs to sample over all splits [default: 6000].")
@click.option("--ratio", default=None, help="--dataset: different:same pairs in every split [default: 4:6].")
@click.option("--split", default=None, help="--dataset: train:val:test shares of identities [default: 0.8:0.1:0.1].")
@click.option("--group-by", metavar="COLUMN",
              help="--dataset: keep each group of identities (a dataset column, e.g. family) in one split, so related "
                   "people never straddle train and val/test.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: model.pt (best on val), last.pt, history.json.")
@backbone_option
@click.option("--weights", type=click.Path(dir_okay=False), help="Local weights file (facenet backbones).")
@click.option("--head", default=None,
              help="Head: siamese (d->d linear + tanh on the frozen embedding), lda (within-class whitening + "
                   "LDA projection, fitted in closed form on the train identities, its size chosen on val; no "
                   "training loop), lda+siamese (siamese trained on that projection), or none (the backbone's "
                   "own embedding, with --unfreeze) [default: siamese; none with --unfreeze].")
@click.option("--distance", type=click.Choice(DISTANCE_NAMES), default="euclidean", show_default=True)
@click.option("--loss", default="bce", show_default=True,
              help="bce (P(same) from the distance, binary cross-entropy), contrastive, metric (dlib's margin "
                   "loss around distance 0.6 on P x K identity batches: every same-person pair and as many of "
                   "the hardest different-person pairs), or arcface (a softmax over the train identities with "
                   "an angular margin, on the same batches; needs --distance cosine).")
@click.option("--margin", type=float, default=None,
              help="--loss contrastive: the margin [default: 1.0]; --loss metric: the margin on each side of 0.6 "
                   "[default: 0.04]; --loss arcface: the added angle in radians [default: 0.5].")
@click.option("--unfreeze", type=click.Choice(UNFREEZE_NAMES), default="none",
              show_default=True,
              help="Also train the backbone's final layer, last residual block, last stage, or (GPU only) every "
                   "layer (dlib-torch, facenet-*). The frozen part runs once per image and mirror image and is "
                   "cached. Changes the defaults of --head, --lr, --min-lr, --weight-decay, --epochs, "
                   "--patience and --augment (see kface.training.config.UNFROZEN_DEFAULTS).")
@click.option("--augment", type=click.Choice(["none", "mirror"]), default=None,
              help="mirror: train on the mirrored chip half of the time [default: mirror with --unfreeze, else none].")
@click.option("--ids-per-batch", type=int, default=32, show_default=True,
              help="--loss metric|arcface: identities per batch (P).")
@click.option("--images-per-id", type=int, default=4, show_default=True,
              help="--loss metric|arcface: images per identity (K).")
@click.option("--batch-groups", metavar="COLUMN",
              help="--loss metric|arcface with --dataset: fill each batch with whole groups of a dataset column (e.g. "
                   "family: "
                   "the negatives mined are relatives; gender: people of one gender).")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="flip: average each embedding with its mirrored chip's.")
@detector_options(default="auto")
@click.option("--upsample", type=click.IntRange(0, 3), default=1, show_default=True,
              help="HOG upsampling (0 is faster and finds faces above about 80 px).")
@click.option("--epochs", type=int, default=None, help="Epochs [default: 200; 20 with --unfreeze].")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Pairs per batch (pair losses).")
@click.option("--lr", type=float, default=None,
              help="Adam learning rate at the first epoch [default: 0.01; 1e-5 with --unfreeze].")
@click.option("--min-lr", type=float, default=None,
              help="Learning rate at the last epoch, cosine schedule in between "
                   "[default: 0.001; 1e-6 with --unfreeze].")
@click.option("--weight-decay", type=float, default=None, help="Adam weight decay [default: 0; 1e-4 with --unfreeze].")
@click.option("--patience", type=int, default=None,
              help="Stop after this many epochs without a better val --select value "
                   "[default: none; 5 with --unfreeze].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the batch order.")
@click.option("--select", type=click.Choice(["overlap", "accuracy"]), default="overlap", show_default=True,
              help="Val metric that picks model.pt's epoch.")
@click.option("--threshold-rule", default="intersection", show_default=True,
              help="How the saved threshold is chosen on val: intersection, max-accuracy, eer or far=X.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt (same settings).")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Face-detection worker processes [default: CPU cores, at most 8].")
@click.option("--embeddings", type=click.Path(),
              help="A Parquet embedding dataset (kface embed --out NAME.parquet) of the same backbone: its vectors "
                   "are the frozen features instead of running the network again.")
@device_option
@json_option("Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes.")
@cache_options("Neither read nor write the face/embedding cache; the feature store is a temporary folder.")
@click.pass_context
@handle_errors
def train(ctx, resume, as_json, quiet, cache, **options):
    """Fine-tune a Siamese head on a frozen backbone with a pair file's train split; select on val.

    With --unfreeze the backbone's last layers train too (dlib-torch or facenet-*), e.g. dlib's metric
    loss on its last residual block: --backbone dlib-torch --unfreeze last-block --loss metric.

    Several processes or machines (DDP: gloo on CPU, nccl on GPU) through torchrun:

    \b
    torchrun --nproc_per_node 2 -m kface train --pairs p.csv --out runs/x
    """
    from ..training.config import TrainConfig, saved_config
    from ..training.run import train as run

    main_process = os.environ.get("RANK", "0") == "0"
    setup_logging(quiet or not main_process)
    if options["workers"] is None:
        options.pop("workers")
    if resume:
        # Settings come from the run; those given on the command line must agree with it.
        given = {name: value for name, value in options.items()
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        options = {**saved_config(options["out"]), **given}
    embeddings = options.pop("embeddings", None)
    config = TrainConfig.from_dict(options)
    if embeddings:
        if not cache.enabled:
            raise click.UsageError("--embeddings fills the feature store in the cache folder; drop --no-cache")
        import_stored_vectors(FeatureStore(config.feature_spec(), device=config.device, cache=cache), embeddings)
    result = run(config, resume=resume, progress=not quiet, cache=cache)
    if not result.main:
        # A helper process of a DDP job has nothing to print; it leaves without C++ static destructors, one of
        # which (torch's, after the process group is gone) sometimes aborted at exit on a busy CPU ("terminate
        # called without an active exception"), failing a finished job. Its outputs are the main process's.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    best = result.best
    summary = {"out": str(result.out), "model": str(result.model_path), "best_epoch": best.get("epoch"),
               "select": config.select, "best_value": best.get("value"), "threshold": best.get("threshold"),
               "epochs": config.epochs, "last": result.history[-1], "data": result.summary, "timing": result.timing,
               "baseline": result.baseline, "beats_baseline": result.beats_baseline}
    if as_json:
        print_json(summary)
    elif not quiet:
        last = result.history[-1]
        click.echo(f"trained {last['epoch']} epochs; best epoch {best.get('epoch')} by val {config.select} "
                   f"({best.get('value'):.4f}); last epoch val accuracy {last.get('val_accuracy', float('nan')):.4f}, "
                   f"loss {last.get('val_loss', float('nan')):.4f}; wrote {result.out}", err=True)
        if result.baseline:
            click.echo(f"base backbone on val: {config.select} {result.baseline[config.select]:.4f} "
                       f"({'beaten' if result.beats_baseline else 'not beaten'} by model.pt)", err=True)


@click.command()
@dataset_options(IDENTITY_DATASETS)
@click.option("--ratios", default="1:9,2:8,3:7,4:6,5:5,6:4,7:3,8:2,9:1", show_default=True,
              help="Different:same ratios to sweep, comma-separated.")
@click.option("--images-per-identity", help="K values to sweep, e.g. 5,10 ('all' for every image) [default: all].")
@click.option("--pairs", "pair_count", type=click.IntRange(1), default=2000, show_default=True,
              help="Pairs per setting, over all splits.")
@click.option("--split", default="0.8:0.1:0.1", show_default=True, help="train:val:test shares (by identity).")
@click.option("--hard-negatives", is_flag=True, help="Different-person pairs of the same gender and age band.")
@click.option("--group-by", metavar="COLUMN",
              help="Keep each group of identities (a dataset column, e.g. family) in one split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of sampling, training and reports.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="[default: 200; 20 with --unfreeze]")
@backbone_option
@click.option("--unfreeze", type=click.Choice(UNFREEZE_NAMES), default="none",
              show_default=True, help="Also train the backbone's last layers (as kface train --unfreeze).")
@click.option("--loss", default="bce", show_default=True,
              help="bce, contrastive, metric or arcface (as kface train --loss).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="[default: 0.01; 1e-5 with --unfreeze]")
@click.option("--min-lr", type=float, default=None, help="[default: 0.001; 1e-6 with --unfreeze]")
@click.option("--heads", default="siamese", show_default=True,
              help="Heads to compare, comma-separated: siamese, lda, lda+siamese (as kface train --head).")
@click.option("--distance", "distances", default="euclidean", show_default=True,
              help=f"Distances to compare, comma-separated: {', '.join(DISTANCE_NAMES)}.")
@click.option("--baseline/--no-baseline", default=None,
              help="Also score the base backbone (head 'base', nothing trained) on each pair file and distance "
                   "[default: when heads or distances are compared].")
@detector_options(default="auto")
@click.option("--rule", default="intersection", show_default=True,
              help="Threshold rule on each setting's val split: intersection, max-accuracy, eer or far=X.")
@click.option("--samples", default="400", show_default=True, help="Test pairs per class in each report, or 'all'.")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Face-detection worker processes [default: CPU cores, at most 8].")
@device_option
@click.option("--resume", is_flag=True, help="Continue the sweep in --out: reuse finished settings.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Sweep folder: sweep.csv, sweep.md, sweep.png, and pairs/, runs/ and a report per setting.")
@json_option("Print the rows of sweep.csv as JSON on stdout.")
@common_options
@click.pass_context
@handle_errors
def sweep(ctx, dataset, root, layout_options, ratios, images_per_identity, pair_count, split, hard_negatives, group_by,
          seed,
          epochs, backbone, unfreeze, loss, batch_size, lr, min_lr, heads, distances, baseline, detector, fallback,
          max_pixels,
          rule, samples, workers, device, resume, out, as_json, quiet, cache):
    """For each ratio (and images-per-identity setting, head, distance): make pairs, train, report; then tabulate.

    Example: kface sweep --dataset kface --root K-Face --cameras frontal --images-per-identity 5,10
    --out reports/kface-sweep; compare heads on one ratio with --ratios 4:6 --heads siamese,lda,lda+siamese
    --distance euclidean,cosine
    """
    setup_logging(quiet)
    train = {"epochs": epochs, "backbone": backbone, "unfreeze": unfreeze, "loss": loss, "batch_size": batch_size,
             "lr": lr, "min_lr": min_lr, "detector": detector, "fallback": fallback, "max_pixels": max_pixels,
             "device": device, "workers": workers}
    config = sweep_config(dataset, root, out, layout_options, ratios=ratios, images_per_identity=images_per_identity,
                          heads=heads, distances=distances, split=split, rule=rule, samples=samples, train=train,
                          pairs=pair_count, hard_negatives=hard_negatives, group_by=group_by, seed=seed,
                          baseline=baseline)
    rows = run_sweep(config, resume=resume, progress=not quiet, cache=cache, command=command_line(ctx))
    if as_json:
        print_json({"out": out, "rows": rows})
    elif not quiet:
        click.echo(f"swept {len(rows)} settings; wrote {out}/sweep.csv, sweep.md and sweep.png", err=True)


# -- age and gender --------------------------------------------------------------------------------
@click.command("train-attributes")
@dataset_options(ATTRIBUTE_DATASETS)
@click.option("--task", type=click.Choice(["age", "gender", "both"]),
              help="Heads to train [default: every attribute the dataset labels].")
@click.option("--age-bins", default="0,10,20,30,40,50,60", show_default=True,
              help="Lower edges of the age groups; the last group is open (60+).")
@click.option("--split", default="0.7:0.1:0.2", show_default=True,
              help="train:val:test shares of images, split by identity (or --group-by; val picks the best "
                   "epoch; test may be 0). Layouts without identities (aaf) split image by image.")
@click.option("--group-by", metavar="COLUMN",
              help="Keep each group of identities (a dataset column, e.g. family) in one split, so related "
                   "people never straddle train and val/test.")
@click.option("--age-loss", type=click.Choice(["ce", "ordinal"]), default="ce", show_default=True,
              help="Age head: cross-entropy, or ordinal (CORAL-style cumulative logits: one group off costs "
                   "less than five).")
@click.option("--sampling", type=click.Choice(["weighted", "balanced"]), default="weighted", show_default=True,
              help="Class imbalance: inverse-frequency loss weights, or batches drawn balanced over the "
                   "age-group x gender cells.")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="flip: train on each face and its mirror image; predictions average the two.")
@click.option("--trunk", type=click.Choice(["separate", "shared"]), default="separate", show_default=True,
              help="One hidden layer per head, or one shared by both heads.")
@click.option("--unfreeze", type=click.Choice(["none", "fc", "last-block", "last-stage"]), default="none",
              show_default=True,
              help="Also train the backbone's final layer, last residual block or last stage for these tasks "
                   "(--backbone dlib-torch or facenet-*); the frozen part runs once per image and mirror image "
                   "and is cached. The model then reads aligned chips (analyze runs the whole network).")
@click.option("--suffix-lr", type=float, default=1e-4, show_default=True,
              help="--unfreeze: Adam learning rate of the backbone's trained layers (the heads use --lr).")
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--hidden", type=click.IntRange(1), default=512, show_default=True, help="Hidden units per head.")
@click.option("--dropout", type=float, default=0.3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, initialisation and batches.")
@backbone_option
@detector_options(default="auto", fallback="whole-image")
@device_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: model.pt (best on val), history.json, split.csv, report/.")
@click.option("--report", type=click.Path(file_okay=False),
              help="Report folder (metrics.json, confusion.png, report.md) [default: OUT/report].")
@json_option("Print the test metrics as one JSON object on stdout.")
@common_options
@handle_errors
def train_attributes(dataset, root, layout_options, task, age_bins, split, group_by, age_loss, sampling, tta, trunk,
                     unfreeze, suffix_lr, epochs, batch_size, lr, weight_decay, hidden, dropout, seed, backbone,
                     detector, fallback, max_pixels, device, out, report, as_json, quiet, cache):
    """Train age-group and/or gender heads on the embedding of a labelled dataset (frozen, or with the
    backbone's last layers, --unfreeze).

    Example: kface train-attributes --dataset lfw-gender --root path/to/lfw --out runs/gender.
    The shipped Korean model: python -m kface.build.attributes build --root path/to/korean_family
    """
    setup_logging(quiet)
    config = AttributeConfig(dataset=dataset, root=root, out=out,
                             dataset_options=checked_dataset_options(dataset, **layout_options), task=task,
                             age_bins=parse_age_bins(age_bins).edges, split=parse_split(split), epochs=epochs,
                             batch_size=batch_size, lr=lr, weight_decay=weight_decay, hidden=hidden, dropout=dropout,
                             trunk=trunk, age_loss=age_loss, sampling=sampling, tta=tta, group_by=group_by,
                             unfreeze=unfreeze, suffix_lr=suffix_lr, seed=seed, backbone=backbone, detector=detector,
                             fallback=fallback, device=device, max_pixels=max_pixels, cache=cache,
                             report=report)
    result = run(config, progress=not quiet)
    metrics = result.metrics
    if as_json:
        print_json({key: metrics[key] for key in ("model", "tasks", "seed", "best_epoch", "gender_accuracy",
                                                   "age_accuracy", "age_adjacent_accuracy", "age_mae_years",
                                                   "split", "images", "test") if key in metrics}
                   | {"report": str(result.report_dir)})
        return
    parts = []
    if "gender_accuracy" in metrics:
        parts.append(f"gender accuracy {metrics['gender_accuracy']:.1%}")
    if "age_accuracy" in metrics:
        parts.append(f"age-group accuracy {metrics['age_accuracy']:.1%} (adjacent "
                     f"{metrics['age_adjacent_accuracy']:.1%}, MAE {metrics['age_mae_years']:.1f} years)")
    scored = "test" if "test" in metrics else "val"
    click.echo(f"{scored} split ({metrics['split']['counts'][scored]['images']} images): {', '.join(parts)}; "
               f"wrote {result.model_path} and {result.report_dir}/")
