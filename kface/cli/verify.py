"""``kface verify``: are the faces in two images (or each pair of a pair file) the same person?"""
from __future__ import annotations

from contextlib import nullcontext

import click

from ..api import FaceOptions, load_verifier
from ..evaluation.scoring import score_pair_file
from ..util.cache import RequestMemory
from .options import (
    backbone_option,
    common_options,
    detector_options,
    device_option,
    engine_option,
    handle_errors,
    json_option,
    model_option,
    operating_point_options,
    print_json,
    setup_logging,
)


@click.command()
@click.argument("images", nargs=-1, type=click.Path())
@model_option
@backbone_option
@detector_options(default="auto")
@click.option("--threshold", type=float,
              help="Distance threshold (default: the model's or the backbone's measured one).")
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
           far, abstain, engine, device, as_json, quiet, cache):
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
    faces_cache = RequestMemory() if not cache.enabled and not pairs_file else cache
    options = FaceOptions(detector=detector, fallback=fallback, device=device, cache=faces_cache, progress=not quiet,
                          max_pixels=max_pixels)
    verifier = load_verifier(model, backbone=backbone, threshold=threshold, engine=engine, options=options,
                             operating_point=operating_point, far=far, abstain=abstain)
    if pairs_file:
        summary = score_pair_file(verifier, pairs_file, out, root=root)
        if as_json:
            print_json(summary)
        elif not quiet:
            click.echo(f"scored {summary['pairs']} pairs ({summary['accuracy_text']}); wrote {out}", err=True)
        return
    with faces_cache.request() if isinstance(faces_cache, RequestMemory) else nullcontext():
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
