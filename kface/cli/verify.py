"""The face commands: ``kface embed``, ``kface verify`` and ``kface analyze``."""
from __future__ import annotations

from contextlib import nullcontext

import click

from ..api import embed as embed_images
from ..api import load_verifier
from ..backbones import backbone_for_engine
from ..datasets import ADAPTERS
from ..embeddings.npz import write_embedding_file
from ..evaluation.scoring import score_pair_file
from ..scale.batches import EmbedSettings, dataset_items, image_items
from ..toolkit import analyze as analyze_image
from ..util.cache import RequestMemory
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
    operating_point_options,
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
          fallback, max_pixels, tta, weights, strict, skip_bad, workers, engine, device, as_json, quiet, no_cache):
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
                         shard_rows=shard_rows, workers=workers, cache=not no_cache, quiet=quiet, as_json=as_json)
        return
    if not images:
        raise click.UsageError("give the IMAGE arguments to embed")
    result = embed_images(list(images), model=model, backbone=backbone_for_engine(backbone, engine), detector=detector, fallback=fallback, tta=tta,
                          device=device, weights=weights, cache=not no_cache, max_pixels=max_pixels,
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


@click.command()
@click.argument("images", nargs=-1, type=click.Path())
@model_option
@backbone_option
@detector_options(default="auto")
@click.option("--threshold", type=float, help="Distance threshold (default: the model's or the backbone's measured one).")
@click.option("--pairs", "pairs_file", type=click.Path(dir_okay=False), help="Score a whole pair file instead of A B.")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset root for the pair file's relative paths.")
@click.option("--out", type=click.Path(dir_okay=False), help="With --pairs: the results CSV.")
@operating_point_options()
@engine_option
@device_option
@json_option()
@common_options
@handle_errors
def verify(images, model, backbone, detector, fallback, max_pixels, threshold, pairs_file, root, out, operating_point,
           far, abstain, engine, device, as_json, quiet, no_cache):
    """Are the faces in A and B the same person? Prints same/different, the distance and the threshold.

    The JSON answer also names the operating point with its expected false-accept and true-accept rates,
    the calibrated probability that both faces are one person, and ``caution`` where the model is weak
    (a face that looks under 13, or a large age gap). Exit code 0 whether same or different; 2 for bad
    input (unreadable file, no face).
    """
    setup_logging(quiet)
    if pairs_file:
        if images:
            raise click.UsageError("give either two images or --pairs FILE, not both")
        if not out:
            raise click.UsageError("--pairs needs --out results.csv")
    elif len(images) != 2:
        raise click.UsageError(f"verify takes two images (A B), got {len(images)}")
    # Two images without the disk cache: their faces still held in memory for this one call, so the ages
    # (--json) read the chips just found instead of finding the faces again.
    cache = RequestMemory() if no_cache and not pairs_file else not no_cache
    verifier = load_verifier(model, backbone, detector, threshold, fallback, device, cache=cache,
                             progress=not quiet, max_pixels=max_pixels, engine=engine,
                             operating_point=operating_point, far=far, abstain=abstain)
    if pairs_file:
        summary = score_pair_file(verifier, pairs_file, out, root=root)
        if as_json:
            print_json(summary)
        elif not quiet:
            click.echo(f"scored {summary['pairs']} pairs ({summary['accuracy_text']}); wrote {out}", err=True)
        return
    with cache.request() if isinstance(cache, RequestMemory) else nullcontext():
        answer = verifier.verify(images[0], images[1], ages=as_json)
    if as_json:
        print_json(answer.to_dict())
        return
    click.echo(answer_text(answer))
    if answer.caution:
        click.echo(f"caution: {answer.caution['reason']}; on held-out families such pairs were answered right "
                   f"{answer.caution['heldout_accuracy']:.0%} of the time.")


def answer_text(answer) -> str:
    """The one-line answer: the decision, distance against threshold, the point and the probability."""
    point = "" if answer.operating_point == "balanced" else f", operating point {answer.operating_point}"
    probability = "" if answer.probability is None else f", probability {answer.probability:.2f}"
    side = "<=" if answer.same else ">"
    detail = (f"distance {answer.distance:.4f} {side} threshold {answer.threshold:.4f}{point}{probability}, "
              f"model {answer.model}")
    if answer.answer == "cannot tell":
        return f"cannot tell ({detail}: the model is unsure at this distance)"
    return f"{'same person' if answer.same else 'different people'} ({detail})"



@click.command()
@click.argument("image", type=click.Path())
@click.option("--model", type=click.Path(dir_okay=False),
              help="An attribute model from kface train-attributes (runs/NAME/model.pt) [default: the shipped "
                   "Korean model, attributes-korean-v4].")
@click.option("--all-faces", is_flag=True, help="Every face in the image with its box, not only the largest.")
@detector_options(default=None)
@device_option
@json_option()
@common_options
@handle_errors
def analyze(image, model, all_faces, detector, fallback, max_pixels, device, as_json, quiet, no_cache):
    """Age group and gender of the face in IMAGE (the largest, or every face with --all-faces).

    Uses the shipped Korean model (8 age classes 0-6 ... 67-80, gender; trained on Korean family-album
    faces) unless --model names your own; the detector defaults to the model's (auto for the shipped one).
    JSON keys: model, age_group, age_probs, expected_age, age_interval (low, high, coverage), gender,
    gender_prob, gender_probs, box, stage, found (with --all-faces: a list of those under "faces").
    Exit 2 for bad input or a missing model file.
    """
    setup_logging(quiet)
    answer = analyze_image(image, model=model, all_faces=all_faces, detector=detector, fallback=fallback,
                           device=device, cache=not no_cache, max_pixels=max_pixels)
    if as_json:
        print_json(answer)
        return
    for face in answer.get("faces", [answer]):
        parts = []
        if face["age_group"] is not None:
            interval = face["age_interval"]
            spread = f", {interval['coverage']:.0%} within {interval['low']:.0f}-{interval['high']:.0f}" if interval else ""
            wider = face.get("age_interval_outside_albums")
            if wider:
                spread += f"; {wider['low']:.0f}-{wider['high']:.0f} on photos unlike family albums"
            parts.append(f"age {face['age_group']} (p {face['age_probs'][face['age_group']]:.2f}, "
                         f"expected {face['expected_age']:.0f}{spread})")
        if face["gender"] is not None:
            parts.append(f"{face['gender']} (p {face['gender_prob']:.2f})")
        click.echo(f"{', '.join(parts)}; face {tuple(face['box'])} found by {face['stage']}")
