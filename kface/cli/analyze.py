"""``kface analyze``: the age group and gender of the faces in an image."""
from __future__ import annotations

import click

from ..toolkit import analyze as analyze_image
from .options import (
    common_options,
    detector_options,
    device_option,
    handle_errors,
    json_option,
    print_json,
    setup_logging,
)


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
def analyze(image, model, all_faces, detector, fallback, max_pixels, device, as_json, quiet, cache):
    """Age group and gender of the face in IMAGE (the largest, or every face with --all-faces).

    Uses the shipped Korean model (8 age classes 0-6 ... 67-80, gender; trained on Korean family-album
    faces) unless --model names your own; the detector defaults to the model's (auto for the shipped one).
    JSON keys: model, age_group, age_probs, expected_age, age_interval (low, high, coverage), gender,
    gender_prob, gender_probs, box, stage, found (with --all-faces: a list of those under "faces").
    Exit 2 for bad input or a missing model file.
    """
    setup_logging(quiet)
    answer = analyze_image(image, model=model, all_faces=all_faces, detector=detector, fallback=fallback,
                           device=device, cache=cache, max_pixels=max_pixels)
    if as_json:
        print_json(answer)
        return
    for face in answer.get("faces", [answer]):
        parts = []
        if face["age_group"] is not None:
            interval = face["age_interval"]
            spread = (f", {interval['coverage']:.0%} within {interval['low']:.0f}-{interval['high']:.0f}"
                      if interval else "")
            wider = face.get("age_interval_outside_albums")
            if wider:
                spread += f"; {wider['low']:.0f}-{wider['high']:.0f} on photos unlike family albums"
            parts.append(f"age {face['age_group']} (p {face['age_probs'][face['age_group']]:.2f}, "
                         f"expected {face['expected_age']:.0f}{spread})")
        if face["gender"] is not None:
            parts.append(f"{face['gender']} (p {face['gender_prob']:.2f})")
        click.echo(f"{', '.join(parts)}; face {tuple(face['box'])} found by {face['stage']}")
