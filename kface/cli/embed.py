"""``kface embed``: the faces of images (or a dataset) into an .npz, or a Parquet dataset of embeddings."""
from __future__ import annotations

import click

from ..api import embed as embed_images
from ..backbones import backbone_for_engine
from ..datasets import ADAPTERS
from ..embeddings.npz import write_embedding_file
from ..scale.batches import EmbedSettings, dataset_items, image_items
from .options import (
    backbone_option,
    common_options,
    detector_options,
    device_option,
    echo_no_face_notes,
    engine_option,
    handle_errors,
    json_option,
    model_label,
    model_option,
    print_json,
    setup_logging,
)
from .scale import check_parquet_options, embed_to_parquet, is_parquet, ray_options


@click.command()
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--out", required=True, type=click.Path(),
              help="Output: an .npz file, or NAME.parquet (a folder of Parquet shards, one row per input, resumable).")
@click.option("--dataset", type=click.Choice(sorted(ADAPTERS)),
              help="Embed a whole dataset (with its labels) instead of IMAGE arguments; needs a .parquet --out.")
@click.option("--root", type=click.Path(file_okay=False), help="--dataset: the dataset's root folder.")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="--dataset csv: the manifest (path,identity,...), paths relative to --root.")
@ray_options
@model_option
@backbone_option
@detector_options(default="auto")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="flip: average each embedding with its mirrored chip's.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local weights file (facenet backbones).")
@click.option("--strict", is_flag=True,
              help="An image with no face (with a .parquet --out: any bad image) is an error (exit 2) instead of a "
                   "row.")
@click.option("--skip-bad", is_flag=True,
              help="Leave out unreadable images (with --strict, faceless ones too) instead of failing.")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Processes that decode, detect and align faces for large inputs (0: none) [default: CPU cores].")
@engine_option
@device_option
@json_option("Print a JSON summary on stdout.")
@common_options
@handle_errors
def embed(images, out, dataset, root, manifest, ray_address, ray_workers, shard_rows, model, backbone, detector,
          fallback, max_pixels, tta, weights, strict, skip_bad, workers, engine, device, as_json, quiet, cache):
    """Embed the faces of IMAGES (or a whole --dataset) into an .npz or a Parquet dataset.

    .npz keys: paths, embeddings, found, stages, notes, model, precision. An image with no face is a row
    of its own (found false, stage none, a NaN embedding, a note saying why) unless --strict; results are
    cached as they come, so an interrupted run resumes.

    NAME.parquet: a folder of shards, one row per input (path, labels, sha256, found, stage, box, error,
    embedding, model, precision); unreadable files and faceless photos are rows with their error. The
    same command run again skips the rows already written. --ray runs it on Ray Data.
    """
    setup_logging(quiet)
    check_parquet_options(out, ray_address, ray_workers, shard_rows, dataset, skip_bad)
    if is_parquet(out):
        if bool(images) == bool(dataset):
            raise click.UsageError("give IMAGE arguments or --dataset KIND --root DIR, not both or neither")
        if dataset and not root:
            raise click.UsageError("--dataset needs --root DIR")
        layout = {"manifest": manifest} if manifest else {}
        items = dataset_items(dataset, root, layout, progress=not quiet) if dataset else image_items(images)
        settings = EmbedSettings(model, backbone, detector, fallback, tta, weights, device, max_pixels, engine)
        embed_to_parquet(items, out, settings, strict=strict, ray_address=ray_address, ray_workers=ray_workers,
                         shard_rows=shard_rows, workers=workers, cache=cache, quiet=quiet, as_json=as_json)
        return
    if not images:
        raise click.UsageError("give the IMAGE arguments to embed")
    result = embed_images(list(images), model=model, backbone=backbone_for_engine(backbone, engine), detector=detector,
                          fallback=fallback, tta=tta,
                          device=device, weights=weights, cache=cache, max_pixels=max_pixels,
                          on_error="skip" if skip_bad else "raise", no_face="error" if strict else "row",
                          workers=workers, progress=not quiet)
    for message in result.errors.values():
        click.echo(f"skipped: {message}", err=True)
    label = model_label(model, backbone)
    counts = write_embedding_file(result, out, label)
    if not quiet:
        echo_no_face_notes(list(result.notes.values()))
    summary = {"out": out, **counts, "backbone": backbone, "model": label}
    if as_json:
        print_json(summary)
    elif not quiet:
        click.echo(f"wrote {summary['count']} embeddings ({summary['dim']}-d, {summary['model']}) to {out}", err=True)
