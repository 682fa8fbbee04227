"""The `kface` command line: each command parses its options, calls the Python API and prints.

Errors are one line on stderr, ``error: ...``, exit 2 for bad input or usage and 1 for runtime failures
(see kface.errors). Heavy libraries are imported inside the commands, so ``kface --help`` stays fast.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from typing import Optional

import click

from .. import __version__
from ..errors import KfaceError

DETECTOR_CHOICES = ["dlib", "mtcnn", "auto", "none"]


def handle_errors(command):
    """Turn KfaceError (and Ctrl-C) into one ``error:`` line and the right exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KfaceError as exc:
            if os.environ.get("KFACE_DEBUG") == "1":
                import traceback

                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)

    return wrapper


def setup_logging(quiet: bool) -> None:
    """Notes from the library (several faces, stage counts) go to stderr as ``note: ...``."""
    logger = logging.getLogger("kface")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("note: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def print_json(payload: dict) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


# -- options shared by several commands ------------------------------------------------------------
def backbone_option(function):
    return click.option("--backbone", default="dlib-resnet", show_default=True,
                        help="Face backbone: dlib-resnet, dlib-native, dlib-torch, facenet-vggface2, facenet-casia.")(function)


def detector_options(default: str = "dlib", fallback: str = "none"):
    def decorate(function):
        function = click.option("--max-pixels", type=click.IntRange(1), default=None,
                                help="Refuse images with more pixels than this (default 40,000,000).")(function)
        function = click.option("--fallback", type=click.Choice(["none", "whole-image"]), default=fallback,
                                show_default=True,
                                help="When no face is found: fail (none) or use the whole image as the face.")(function)
        function = click.option("--detector", type=click.Choice(DETECTOR_CHOICES), default=default,
                                show_default=True,
                                help="dlib HOG (with a padded retry), MTCNN, auto (HOG then MTCNN) or none "
                                     "(the whole image is the face).")(function)
        return function

    return decorate


def model_option(function):
    return click.option("--model", help="korean (the shipped Korean face model, the default), dlib (stock dlib at its "
                                        "LFW threshold; with --backbone, that backbone), or a trained "
                                        "runs/NAME/model.pt.")(function)


def engine_option(function):
    return click.option("--engine", type=click.Choice(["onnx", "torch"]), default="onnx", show_default=True,
                        help="What runs the network: onnxruntime (no torch import) or PyTorch (dlib-resnet as "
                             "dlib-torch; a trained model through its PairModel).")(function)


def device_option(function):
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu or cuda (torch backbones, MTCNN, training).")(function)


def _set_cache_env(ctx: click.Context, param: click.Parameter, value):
    """--cache-dir / --no-cache reach every cache a command opens, its worker processes' included; the
    environment is restored when the command ends (it may run inside a longer process, e.g. a test)."""
    if not value:
        return value
    from ..cache import NO_CACHE_ENV

    name, setting = ("KFACE_CACHE_DIR", str(value)) if param.name == "cache_dir" else (NO_CACHE_ENV, "1")
    previous = os.environ.get(name)

    def restore() -> None:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous

    os.environ[name] = setting
    ctx.call_on_close(restore)
    return value


def cache_dir_option(function):
    return click.option("--cache-dir", type=click.Path(file_okay=False), expose_value=False, callback=_set_cache_env,
                        help="Cache folder for this command [default: $KFACE_CACHE_DIR or ~/.cache/kface].")(function)


def common_options(function):
    function = click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes.")(function)
    function = cache_dir_option(function)
    function = click.option("--no-cache", is_flag=True, callback=_set_cache_env,
                            help="Do not read or write the face/embedding cache.")(function)
    return function


# -- the commands ----------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kface")
def cli() -> None:
    """kface: face verification for Korean faces.

    Pair sampling, Siamese fine-tuning on a frozen face backbone, overlap-area evaluation with measured
    thresholds. Every command answers --help.
    """


def _echo_no_face_notes(messages: list[str], shown: int = 10) -> None:
    """One ``note:`` line per image with no face, the first ``shown`` of them, then a count."""
    for message in messages[:shown]:
        click.echo(f"note: {message}", err=True)
    if len(messages) > shown:
        click.echo(f"note: {len(messages) - shown} more images with no face (stage none in the output)", err=True)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@model_option
@backbone_option
@detector_options(default="auto")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="flip: average each embedding with its mirrored chip's.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local weights file (facenet backbones).")
@click.option("--strict", is_flag=True,
              help="An image with no face is an error (exit 2) instead of a row with found=false and stage none.")
@click.option("--skip-bad", is_flag=True,
              help="Leave out unreadable images (with --strict, faceless ones too) instead of failing.")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Processes that decode, detect and align faces for large inputs (0: none) [default: CPU cores].")
@engine_option
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@common_options
@handle_errors
def embed(images, out, model, backbone, detector, fallback, max_pixels, tta, weights, strict, skip_bad, workers, engine, device,
          as_json, quiet, no_cache):
    """Embed the faces of IMAGES into an .npz (keys: paths, embeddings, found, stages, notes).

    An image with no face is a row of its own (found false, stage none, a NaN embedding, a note saying
    why) unless --strict; results are cached as they come, so an interrupted run resumes.
    """
    setup_logging(quiet)
    from ..api import embed as embed_images
    from ..engines import backbone_for_engine
    from ..outputs import write_npz

    result = embed_images(list(images), model=model, backbone=backbone_for_engine(backbone, engine), detector=detector, fallback=fallback, tta=tta,
                          device=device, weights=weights, cache=not no_cache, max_pixels=max_pixels,
                          on_error="skip" if skip_bad else "raise", no_face="error" if strict else "row",
                          workers=workers, progress=not quiet)
    keep = [i for i, path in enumerate(result.paths) if path not in result.errors]
    for path, message in result.errors.items():
        click.echo(f"skipped: {message}", err=True)
    if not keep:
        raise KfaceError("no image could be embedded")
    if not quiet:
        _echo_no_face_notes(list(result.notes.values()))
    import numpy as np

    paths = [result.paths[i] for i in keep]
    write_npz(out, paths=np.array(paths), embeddings=result.embeddings[keep],
              found=result.found[keep], stages=np.array([result.stages[i] for i in keep]),
              notes=np.array([result.notes.get(path, "") for path in paths]))
    summary = {"out": out, "count": len(keep), "skipped": len(result.errors), "dim": int(result.embeddings.shape[1]),
               "found": int(result.found[keep].sum()), "no_face": len(result.notes), "stages": result.stage_counts(),
               "computed": result.computed, "backbone": backbone, "model": _model_label(model, backbone)}
    if as_json:
        print_json(summary)
    elif not quiet:
        click.echo(f"wrote {len(keep)} embeddings ({summary['dim']}-d, {summary['model']}) to {out}", err=True)


def _model_label(model: Optional[str], backbone: str) -> str:
    """The model a command used: the one named, else the default one (or the backbone named instead)."""
    from ..models import default_model

    return model or (default_model() if backbone == "dlib-resnet" else backbone)


@cli.command()
@click.argument("images", nargs=-1, type=click.Path())
@model_option
@backbone_option
@detector_options(default="auto")
@click.option("--threshold", type=float, help="Distance threshold (default: the model's or the backbone's measured one).")
@click.option("--pairs", "pairs_file", type=click.Path(dir_okay=False), help="Score a whole pair file instead of A B.")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset root for the pair file's relative paths.")
@click.option("--out", type=click.Path(dir_okay=False), help="With --pairs: the results CSV.")
@engine_option
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common_options
@handle_errors
def verify(images, model, backbone, detector, fallback, max_pixels, threshold, pairs_file, root, out, engine, device,
           as_json, quiet, no_cache):
    """Are the faces in A and B the same person? Prints same/different, the distance and the threshold.

    Exit code 0 whether same or different; 2 for bad input (unreadable file, no face).
    """
    setup_logging(quiet)
    if pairs_file:
        if images:
            raise click.UsageError("give either two images or --pairs FILE, not both")
        if not out:
            raise click.UsageError("--pairs needs --out results.csv")
    elif len(images) != 2:
        raise click.UsageError(f"verify takes two images (A B), got {len(images)}")
    from ..api import load_verifier

    verifier = load_verifier(model, backbone, detector, threshold, fallback, device, cache=not no_cache,
                             progress=not quiet, max_pixels=max_pixels, engine=engine)
    if pairs_file:
        from ..evaluation.scoring import score_pair_file

        summary = score_pair_file(verifier, pairs_file, out, root=root)
        if as_json:
            print_json(summary)
        elif not quiet:
            click.echo(f"scored {summary['pairs']} pairs ({summary['accuracy_text']}); wrote {out}", err=True)
        return
    answer = verifier.verify(images[0], images[1])
    if as_json:
        print_json(answer.to_dict())
        return
    if answer.same:
        click.echo(f"same person (distance {answer.distance:.4f} <= threshold {answer.threshold:.4f}, "
                   f"model {answer.model})")
    else:
        click.echo(f"different people (distance {answer.distance:.4f} > threshold {answer.threshold:.4f}, "
                   f"model {answer.model})")


# -- datasets and pairs ----------------------------------------------------------------------------
#: Every layout option a dataset may take; kface.datasets.dataset_options checks them against the kind.
DATASET_LAYOUT_OPTIONS = ("manifest", "accessories", "lights", "expressions", "cameras", "frontal_camera",
                          "box_format", "aaf_images")


def dataset_options(kinds: list[str]):
    """--dataset, --root and every layout's options, for each command that reads a dataset.

    The command receives ``dataset``, ``root`` and ``layout_options`` (the raw layout values, ``None``
    where not given) and passes them on: ``load_dataset(dataset, root, **layout_options)`` checks them
    against the layout through ``kface.datasets.dataset_options``.
    """
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            layout_options = {name: kwargs.pop(name) for name in DATASET_LAYOUT_OPTIONS}
            return function(*args, layout_options=layout_options, **kwargs)

        for option in reversed([
            click.option("--dataset", required=True, type=click.Choice(kinds),
                         help="Layout of the data under --root (see pairs/README.md and docs/datasets.md)."),
            click.option("--root", required=True, type=click.Path(), help="The dataset's root folder."),
            click.option("--manifest", type=click.Path(dir_okay=False),
                         help="--dataset csv: the manifest, columns path,identity[,age][,gender], "
                              "paths relative to --root."),
            click.option("--accessories", help="--dataset kface: accessory codes, e.g. S1~3,5 (default all)."),
            click.option("--lights", help="--dataset kface: lighting codes, e.g. L1~7,10~15 (default all)."),
            click.option("--expressions", help="--dataset kface: expression codes, e.g. E1~2 (default all)."),
            click.option("--cameras", help="--dataset kface: camera codes, e.g. C6~8, or 'frontal' (default all)."),
            click.option("--frontal-camera", help="--dataset kface: the frontal camera code [default: C7]."),
            click.option("--box-format", type=click.Choice(["xywh", "xyxy", "none"]),
                         help="--dataset kface: how per-image label files give the face box [default: xywh]; "
                              "none ignores them (detection is used)."),
            click.option("--aaf-images", type=click.Choice(["aligned", "original"]),
                         help="--dataset aaf: the aligned crops or the original photos [default: aligned]."),
        ]):
            wrapper = option(wrapper)
        return wrapper

    return decorate


@cli.command("make-pairs")
@dataset_options(["folder", "kface", "aging", "aaf", "csv"])
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
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, warnings or notes.")
@handle_errors
def make_pairs(dataset, root, layout_options, ratio, pair_count, split, images_per_identity, seed, hard_negatives,
               group_by, out, as_json, quiet):
    """Sample verification pairs from a dataset into a pair CSV and its JSON manifest.

    Example: kface make-pairs --dataset kface --root K-Face/High --cameras frontal --ratio 4:6
    --pairs 2000 --images-per-identity 5
    """
    setup_logging(quiet)
    from ..datasets import load_dataset
    from ..pairs import (PairRequest, default_out_path, parse_ratio, parse_split, require_identities, sample_pairs,
                        write_pairs)

    require_identities(dataset)
    request = PairRequest(parse_ratio(ratio), pair_count, parse_split(split), images_per_identity, seed,
                          hard_negatives, group_by)
    index = load_dataset(dataset, root, progress=not quiet, **layout_options)
    if not quiet:
        for line in index.problems.lines():
            click.echo(f"warning: {line}", err=True)
    pairs = sample_pairs(index, request)
    out_path = out or default_out_path(dataset, request)
    manifest_path = write_pairs(pairs, out_path)
    counts = pairs.counts()
    if as_json:
        print_json({"out": str(out_path), "manifest": str(manifest_path), "pairs": len(pairs),
                    "ratio": str(request.ratio), "seed": seed, "counts": counts,
                    "problems": index.problems.to_dict()})
    elif not quiet:
        shown = ", ".join(f"{name} {c['different']}/{c['same']}" for name, c in counts.items())
        click.echo(f"wrote {len(pairs)} pairs (different/same: {shown}) to {out_path} and {manifest_path}", err=True)


# -- training --------------------------------------------------------------------------------------
@cli.command()
@click.option("--pairs", type=click.Path(dir_okay=False),
              help="Pair file from make-pairs (its train and val splits); or train from --dataset/--root.")
@click.option("--root", type=click.Path(file_okay=False),
              help="With --dataset: the dataset's root; with --pairs: the root its relative paths resolve against.")
@click.option("--dataset", type=click.Choice(["folder", "kface", "aging", "csv"]),
              help="Train from a dataset instead of a pair file: identity-disjoint train/val/test pairs are "
                   "sampled into OUT/pairs.csv, and --loss metric uses every image of the train identities.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="--dataset csv: the manifest (path,identity,...).")
@click.option("--dataset-pairs", type=int, default=None, help="--dataset: pairs to sample over all splits [default: 6000].")
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
@click.option("--distance", type=click.Choice(["euclidean", "cosine"]), default="euclidean", show_default=True)
@click.option("--loss", default="bce", show_default=True,
              help="bce (P(same) from the distance, binary cross-entropy), contrastive, or metric (dlib's margin "
                   "loss around distance 0.6 on P x K identity batches: every same-person pair and as many of "
                   "the hardest different-person pairs).")
@click.option("--margin", type=float, default=None,
              help="--loss contrastive: the margin [default: 1.0]; --loss metric: the margin on each side of 0.6 "
                   "[default: 0.04].")
@click.option("--unfreeze", type=click.Choice(["none", "fc", "last-block", "last-stage", "all"]), default="none",
              show_default=True,
              help="Also train the backbone's final layer, last residual block, last stage, or (GPU only) every "
                   "layer (dlib-torch, facenet-*). The frozen part runs once per image and mirror image and is "
                   "cached. Changes the defaults of --head, --lr, --min-lr, --weight-decay, --epochs, "
                   "--patience and --augment (see kface.training.run.UNFROZEN_DEFAULTS).")
@click.option("--augment", type=click.Choice(["none", "mirror"]), default=None,
              help="mirror: train on the mirrored chip half of the time [default: mirror with --unfreeze, else none].")
@click.option("--ids-per-batch", type=int, default=32, show_default=True, help="--loss metric: identities per batch (P).")
@click.option("--images-per-id", type=int, default=4, show_default=True, help="--loss metric: images per identity (K).")
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
              help="Learning rate at the last epoch, cosine schedule in between [default: 0.001; 1e-6 with --unfreeze].")
@click.option("--weight-decay", type=float, default=None, help="Adam weight decay [default: 0; 1e-4 with --unfreeze].")
@click.option("--patience", type=int, default=None,
              help="Stop after this many epochs without a better val --select value [default: none; 5 with --unfreeze].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the batch order.")
@click.option("--select", type=click.Choice(["overlap", "accuracy"]), default="overlap", show_default=True,
              help="Val metric that picks model.pt's epoch.")
@click.option("--threshold-rule", default="intersection", show_default=True,
              help="How the saved threshold is chosen on val: intersection, max-accuracy, eer or far=X.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt (same settings).")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Face-detection worker processes [default: CPU cores, at most 8].")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes.")
@click.option("--no-cache", is_flag=True, expose_value=False, callback=_set_cache_env,
              help="Neither read nor write the face/embedding cache; the feature store is a temporary folder.")
@cache_dir_option
@click.pass_context
@handle_errors
def train(ctx, resume, as_json, quiet, **options):
    """Fine-tune a Siamese head on a frozen backbone with a pair file's train split; select on val.

    With --unfreeze the backbone's last layers train too (dlib-torch or facenet-*), e.g. dlib's metric
    loss on its last residual block: --backbone dlib-torch --unfreeze last-block --loss metric.

    Several processes or machines (DDP: gloo on CPU, nccl on GPU) through torchrun:

    \b
    torchrun --nproc_per_node 2 -m kface train --pairs p.csv --out runs/x
    """
    import os

    from ..training.run import TrainConfig, saved_config, train as run

    main_process = os.environ.get("RANK", "0") == "0"
    setup_logging(quiet or not main_process)
    if options["workers"] is None:
        options.pop("workers")
    if resume:
        # Settings come from the run; those given on the command line must agree with it.
        given = {name: value for name, value in options.items()
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        options = {**saved_config(options["out"]), **given}
    config = TrainConfig.from_dict(options)
    result = run(config, resume=resume, progress=not quiet)
    if not result.main:
        return
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


@cli.group()
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common_options
@handle_errors
def benchmark_lfw(lfw_dir, pairs_file, model, backbone, detector, fallback, max_pixels, rule, engine, device, as_json,
                  quiet, no_cache):
    """LFW View-2: 10-fold accuracy (mean ± std), AUC, EER, overlap, and the all-folds threshold."""
    setup_logging(quiet)
    from pathlib import Path

    from ..api import load_verifier
    from ..evaluation.lfw import benchmark_lfw as run

    verifier = load_verifier(model, backbone, detector, None if model else 1.0, fallback, device,
                             cache=not no_cache, progress=not quiet, max_pixels=max_pixels, engine=engine)
    result = run(Path(lfw_dir), verifier, pairs_file, rule)
    if as_json:
        print_json(result)
        return
    click.echo(f"LFW View-2 ({result['pairs']} pairs, {result['backbone']}, detector {result['detector']}): "
               f"accuracy {100 * result['accuracy']:.2f}% ± {100 * result['accuracy_std']:.2f}, "
               f"AUC {result['auc']:.4f}, EER {100 * result['eer']:.2f}%, overlap {result['overlap']:.4f}, "
               f"threshold (all folds, {rule}) {result['threshold_all_folds']:.4f}")


@benchmark.command("families")
@dataset_options(["folder", "kface", "aging", "csv"])
@click.option("--group-by", default="family", show_default=True, metavar="COLUMN",
              help="The column whose groups (families) the folds are made of.")
@click.option("--groups", "groups_file", type=click.Path(dir_okay=False),
              help="Use only the groups listed in this file (one per line), e.g. a model's held-out families.")
@click.option("--exclude-groups", type=click.Path(dir_okay=False),
              help="Leave out the groups listed in this file.")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
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
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print benchmark.json's rows on stdout.")
@common_options
@handle_errors
def benchmark_families(dataset, root, layout_options, group_by, groups_file, exclude_groups, folds, pairs_per_class,
                       age_column, keep_copies, models, recipes, rule, seed, out, device, as_json, quiet, no_cache):
    """Family-disjoint k-fold verification: pairs across ages and same-age same-gender hard pairs.

    Example: kface benchmark families --dataset csv --root korean_family --manifest
    korean_family/identities.csv --model dlib --recipe my-recipe.json --out reports/korean
    """
    setup_logging(quiet)
    from pathlib import Path

    from ..evaluation.families import run_benchmark

    rows = run_benchmark(dataset, root, layout_options, group_by=group_by, groups_file=groups_file,
                         exclude_file=exclude_groups, folds=folds, pairs_per_class=pairs_per_class,
                         age_column=age_column, models=models, recipes=recipes, rule=rule, seed=seed, out=Path(out),
                         device=device, cache=not no_cache, progress=not quiet, distinct=not keep_copies,
                         log=(lambda text: None) if quiet else (lambda text: click.echo(f"note: {text}", err=True)))
    if as_json:
        print_json({"out": out, "rows": rows})
    elif not quiet:
        click.echo(Path(out, "benchmark.md").read_text(encoding="utf-8"), nl=False)


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print every model card as JSON on stdout.")
@handle_errors
def models(as_json):
    """The face models that ship with kface: data, recipe, threshold, figures, size and sha256."""
    from ..models import default_model, describe, shipped_names

    cards = [describe(name) for name in shipped_names()]
    if as_json:
        print_json({"default": default_model(), "models": cards})
        return
    for body in cards:
        marker = " (default)" if body["name"] == default_model() else ""
        threshold = body["threshold"]
        click.echo(f"{body['name']}{marker}: {body['description']}")
        click.echo(f"  threshold {threshold['value']:.4f} ({threshold['rule']}): {threshold['source']}")
        for line in body.get("figures_text", []):
            click.echo(f"  {line}")
        click.echo(f"  file {body['file']} ({body['size_bytes'] / 2**20:.1f} MiB, sha256 {body['sha256']})")


@cli.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The ONNX file to write.")
@click.option("--fp16", is_flag=True, help="Store the weights as float16 (half the file; computation stays float32).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON on stdout.")
@handle_errors
def export(model, out, fp16, as_json):
    """Export a trained MODEL (runs/NAME/model.pt) to ONNX: aligned uint8 chips in, the vectors its
    distance is measured on out (tuned layers, flip averaging and head inside), run by onnxruntime."""
    from ..engines import export_checkpoint

    info = export_checkpoint(model, out, fp16=fp16)
    if as_json:
        print_json({"out": out, **info})
        return
    parity = info["parity"]
    click.echo(f"wrote {out} ({info['size_bytes'] / 2**20:.1f} MiB, sha256 {info['sha256']}); input chips uint8 "
               f"{info['input']['shape']}, output {info['output']['shape']}; parity with PyTorch: cosine >= "
               f"{parity['min_cosine']:.7f}, max |diff| {parity['max_abs_diff']:.1e}")


# -- age and gender --------------------------------------------------------------------------------
@cli.command("train-attributes")
@dataset_options(["aging", "aaf", "csv", "lfw-gender"])
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
@click.option("--json", "as_json", is_flag=True, help="Print the test metrics as one JSON object on stdout.")
@common_options
@handle_errors
def train_attributes(dataset, root, layout_options, task, age_bins, split, group_by, age_loss, sampling, tta, trunk,
                     epochs, batch_size, lr, weight_decay, hidden, dropout, seed, backbone, detector, fallback,
                     max_pixels, device, out, report, as_json, quiet, no_cache):
    """Train age-group and/or gender heads on the frozen embedding of a labelled dataset.

    Example: kface train-attributes --dataset lfw-gender --root ../shared/data/lfw --out runs/gender.
    The shipped Korean heads: python -m kface.models.build_attributes build --root ../shared/data/korean_family
    """
    setup_logging(quiet)
    from ..attributes.model import AttributeConfig, parse_age_bins, train_attributes as run
    from ..datasets import dataset_options as checked_dataset_options
    from ..pairs import parse_split

    config = AttributeConfig(dataset=dataset, root=root, out=out,
                             dataset_options=checked_dataset_options(dataset, **layout_options), task=task,
                             age_bins=parse_age_bins(age_bins).edges, split=parse_split(split), epochs=epochs,
                             batch_size=batch_size, lr=lr, weight_decay=weight_decay, hidden=hidden, dropout=dropout,
                             trunk=trunk, age_loss=age_loss, sampling=sampling, tta=tta, group_by=group_by,
                             seed=seed, backbone=backbone, detector=detector, fallback=fallback, device=device,
                             max_pixels=max_pixels, cache=not no_cache, report=report)
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


@cli.command()
@click.argument("image", type=click.Path())
@click.option("--model", type=click.Path(dir_okay=False),
              help="An attribute model from kface train-attributes (runs/NAME/model.pt) [default: the shipped "
                   "Korean heads, attributes-korean-v1].")
@click.option("--all-faces", is_flag=True, help="Every face in the image with its box, not only the largest.")
@detector_options(default=None)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common_options
@handle_errors
def analyze(image, model, all_faces, detector, fallback, max_pixels, device, as_json, quiet, no_cache):
    """Age group and gender of the face in IMAGE (the largest, or every face with --all-faces).

    Uses the shipped Korean heads (8 age classes 0-6 ... 67-80, gender; trained on Korean family-album
    faces) unless --model names your own; the detector defaults to the model's (auto for the shipped one).
    JSON keys: model, age_group, age_probs, expected_age, age_interval (low, high, coverage), gender,
    gender_prob, gender_probs, box, stage, found (with --all-faces: a list of those under "faces").
    Exit 2 for bad input or a missing model file.
    """
    setup_logging(quiet)
    from ..attributes.model import load_analyzer

    analyzer = load_analyzer(model, detector=detector, fallback=fallback, device=device, cache=not no_cache,
                             max_pixels=max_pixels)
    try:
        answer = analyzer.analyze(image, all_faces=all_faces)
    finally:
        analyzer.close()
    if as_json:
        print_json(answer)
        return
    for face in answer.get("faces", [answer]):
        parts = []
        if face["age_group"] is not None:
            interval = face["age_interval"]
            spread = f", {interval['coverage']:.0%} within {interval['low']:.0f}-{interval['high']:.0f}" if interval else ""
            parts.append(f"age {face['age_group']} (p {face['age_probs'][face['age_group']]:.2f}, "
                         f"expected {face['expected_age']:.0f}{spread})")
        if face["gender"] is not None:
            parts.append(f"{face['gender']} (p {face['gender_prob']:.2f})")
        click.echo(f"{', '.join(parts)}; face {tuple(face['box'])} found by {face['stage']}")


# -- reports and sweeps ----------------------------------------------------------------------------
def _command_line(ctx: click.Context) -> str:
    """The command as typed (the options given on the command line), for a report's "Reproduce" section."""
    import shlex

    parts = ["kface", ctx.info_name]
    for param in ctx.command.params:
        if param.name in ("as_json", "quiet") or \
                ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        flag = max(param.opts, key=len)
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            parts += [flag] if value else []
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


@cli.command("overlap-report")
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
@device_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Report folder: metrics.json, distributions.png, roc.png, report.md.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json's content on stdout.")
@common_options
@click.pass_context
@handle_errors
def overlap_report(ctx, pairs_file, model, backbone, weights, detector, fallback, max_pixels, split, val_split, rule,
                   samples, seed, threshold, save_threshold, root, attributes_dataset, attributes_root, device, out,
                   as_json, quiet, no_cache):
    """Accuracy, loss, AUC, EER, TAR@FAR and the overlap area of a model on a pair file, with plots.

    The threshold is chosen on the val split and every number is measured on the test split.
    Example: kface overlap-report --pairs pairs/lfw-4to6.csv --out reports/lfw-base
    """
    setup_logging(quiet)
    from ..errors import InputError

    if save_threshold and not model:
        raise InputError("--save-threshold writes into a trained model: give --model runs/NAME/model.pt")
    if save_threshold and threshold is not None:
        raise InputError("--save-threshold saves a threshold chosen on val; it cannot be combined with --threshold")
    from ..evaluation.report import overlap_report as run, report_verifier, save_report_threshold

    verifier = report_verifier(model, backbone=backbone, detector=detector, fallback=fallback, device=device,
                               weights=weights, cache=not no_cache, progress=not quiet, max_pixels=max_pixels)
    body = run(pairs_file, verifier, split=split, val_split=val_split, rule=rule, samples=samples, seed=seed,
               out_dir=out, root=root, threshold=threshold, attributes_dataset=attributes_dataset,
               attributes_root=attributes_root, command=_command_line(ctx), progress=not quiet)
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


@cli.command()
@dataset_options(["folder", "kface", "aging", "csv"])
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
@click.option("--unfreeze", type=click.Choice(["none", "fc", "last-block", "last-stage", "all"]), default="none",
              show_default=True, help="Also train the backbone's last layers (as kface train --unfreeze).")
@click.option("--loss", default="bce", show_default=True, help="bce, contrastive or metric (as kface train --loss).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="[default: 0.01; 1e-5 with --unfreeze]")
@click.option("--min-lr", type=float, default=None, help="[default: 0.001; 1e-6 with --unfreeze]")
@click.option("--heads", default="siamese", show_default=True,
              help="Heads to compare, comma-separated: siamese, lda, lda+siamese (as kface train --head).")
@click.option("--distance", "distances", default="euclidean", show_default=True,
              help="Distances to compare, comma-separated: euclidean, cosine.")
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
@click.option("--json", "as_json", is_flag=True, help="Print the rows of sweep.csv as JSON on stdout.")
@common_options
@click.pass_context
@handle_errors
def sweep(ctx, dataset, root, layout_options, ratios, images_per_identity, pair_count, split, hard_negatives, group_by,
          seed,
          epochs, backbone, unfreeze, loss, batch_size, lr, min_lr, heads, distances, baseline, detector, fallback,
          max_pixels,
          rule, samples, workers, device, resume, out, as_json, quiet, no_cache):
    """For each ratio (and images-per-identity setting, head, distance): make pairs, train, report; then tabulate.

    Example: kface sweep --dataset kface --root K-Face --cameras frontal --images-per-identity 5,10
    --out reports/kface-sweep; compare heads on one ratio with --ratios 4:6 --heads siamese,lda,lda+siamese
    --distance euclidean,cosine
    """
    setup_logging(quiet)
    from ..datasets import dataset_options as checked_dataset_options
    from ..metrics import parse_rule, parse_samples
    from ..pairs import parse_split
    from ..evaluation.sweep import SweepConfig, parse_distances, parse_heads, parse_images_per_identity, parse_ratios, run_sweep

    train_options = {"epochs": epochs, "backbone": backbone, "unfreeze": unfreeze, "loss": loss,
                     "batch_size": batch_size, "lr": lr, "min_lr": min_lr, "detector": detector, "fallback": fallback,
                     "max_pixels": max_pixels, "device": device}
    # Left out when not given, so that the defaults of the chosen recipe (--unfreeze) apply.
    train_options = {name: value for name, value in train_options.items() if value is not None}
    if workers is not None:
        train_options["workers"] = workers
    config = SweepConfig(dataset=dataset, root=root, out=out,
                         dataset_options=checked_dataset_options(dataset, **layout_options),
                         ratios=parse_ratios(ratios), images_per_identity=parse_images_per_identity(images_per_identity),
                         heads=parse_heads(heads), distances=parse_distances(distances), pairs=pair_count, split=parse_split(split), hard_negatives=hard_negatives,
                         group_by=group_by, seed=seed,
                         rule=str(parse_rule(rule)), samples=parse_samples(samples), train=train_options,
                         baseline=baseline)
    rows = run_sweep(config, resume=resume, progress=not quiet, cache=not no_cache, command=_command_line(ctx))
    if as_json:
        print_json({"out": out, "rows": rows})
    elif not quiet:
        click.echo(f"swept {len(rows)} settings; wrote {out}/sweep.csv, sweep.md and sweep.png", err=True)


@cli.command()
@model_option
@click.option("--attributes-model", type=click.Path(dir_okay=False),
              help="An attribute model from kface train-attributes, for age group and gender (POST /analyze) "
                   "[default: the shipped Korean heads, attributes-korean-v1].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets other machines upload faces (a warning says so).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one).")
@backbone_option
@detector_options(default="auto")
@click.option("--threshold", type=float, help="Distance threshold (default: the model's or the backbone's measured one).")
@click.option("--distances", type=click.Path(dir_okay=False),
              help="Labelled distances to draw on the page (CSV with label,distance[,split], e.g. from "
                   "kface verify --pairs FILE --out results.csv with the same model; default: a trained "
                   "model's stored val distances).")
@click.option("--distances-split", help="Use only this split's rows of --distances (e.g. test).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.01), default=20.0, show_default=True,
              help="Largest request accepted (both photos together).")
@click.option("--workers", type=click.IntRange(1),
              help="Requests worked on at once, each with its own copy of the models (default: CPU cores, at most 4).")
@click.option("--max-in-flight", type=click.IntRange(1), default=8, show_default=True,
              help="Uploads let in at once (others wait, unread, then get 503): request bodies take at most "
                   "this x 3 x --max-upload-mb of memory.")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds a request's whole body may take to arrive (a slower client gets 408).")
@click.option("--gallery", type=click.Path(dir_okay=False),
              help="A gallery (from kface enroll, same model) for POST /search and POST /enroll and the page's search.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No request log.")
@handle_errors
def serve(model, attributes_model, host, port, backbone, detector, fallback, max_pixels, threshold, distances,
          distances_split, max_upload_mb, workers, max_in_flight, body_timeout, gallery, device, quiet):
    """Serve a local web page and JSON API for verify and analyze (page at /, API docs at /docs).

    POST /verify (fields image_a, image_b), POST /analyze (field image), GET /health. Photos are
    processed in memory, never stored or logged. Example: kface serve --port 8000, then open
    http://127.0.0.1:8000/
    """
    setup_logging(quiet)
    from ..serve.app import run_server

    run_server(model, attributes_model, host=host, port=port, backbone=backbone, detector=detector, fallback=fallback,
               threshold=threshold, device=device, max_pixels=max_pixels, max_request_mb=max_upload_mb,
               workers=workers, distances=distances, distances_split=distances_split, quiet=quiet,
               max_in_flight=max_in_flight, body_timeout_s=body_timeout, gallery=gallery)


from .gallery import register as _register_gallery_commands  # noqa: E402  (enroll, search, gallery, cluster)

_register_gallery_commands(cli, benchmark)


def main() -> None:
    """Console-script entry point: every failure, kface's or not, ends as one ``error:`` line."""
    from .errors import run

    run(cli, prog_name="kface")


if __name__ == "__main__":
    main()
