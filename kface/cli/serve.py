"""The ``kface serve`` command: the local web page and JSON API."""
from __future__ import annotations

import click

from ..serve.auth import DEFAULT_RATE_PER_MINUTE, load_tokens
from .options import (
    backbone_option,
    detector_options,
    device_option,
    handle_errors,
    model_option,
    operating_point_options,
    setup_logging,
)


@click.command()
@model_option
@click.option("--attributes-model", type=click.Path(dir_okay=False),
              help="An attribute model from kface train-attributes, for age group and gender (POST /analyze) "
                   "[default: the shipped Korean model, attributes-korean-v4].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets other machines reach it, and needs a token "
                   "(--token-file) or --no-token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one).")
@backbone_option
@detector_options(default="auto")
@click.option("--threshold", type=float,
              help="Distance threshold (default: the model's or the backbone's measured one).")
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
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="Require Authorization: Bearer <token> on every API route, with a token of this file (one a "
                   "line; may search and enroll) [default: $KFACE_TOKEN, if set].")
@click.option("--read-token-file", type=click.Path(dir_okay=False),
              help="Tokens that may verify, analyze and search, but not enroll (e.g. a kiosk's).")
@click.option("--write-token-file", type=click.Path(dir_okay=False),
              help="Tokens that may also enroll into the gallery.")
@click.option("--no-token", is_flag=True, help="Listen beyond loopback without a token (anyone who reaches the port "
                                                "may use it; a warning says so).")
@click.option("--rate-limit", type=click.IntRange(0), default=None,
              help=f"API requests a minute each client address may make (past it: 429); 0: no limit [default: "
                   f"{DEFAULT_RATE_PER_MINUTE} when --host is not loopback, else no limit].")
@operating_point_options()
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No request log.")
@handle_errors
def serve(model, attributes_model, host, port, backbone, detector, fallback, max_pixels, threshold, distances,
          distances_split, max_upload_mb, workers, max_in_flight, body_timeout, gallery, token_file, read_token_file,
          write_token_file, no_token, rate_limit, operating_point, far, abstain, device, quiet):
    """Serve a local web page and JSON API for verify and analyze (page at /, API docs at /docs).

    POST /verify (fields image_a, image_b), POST /analyze (field image), GET /health. Photos are
    processed in memory, never stored or logged. Example: kface serve --port 8000, then open
    http://127.0.0.1:8000/
    """
    setup_logging(quiet)
    from ..serve.app import run_server
    tokens = load_tokens(token_file, read_token_file, write_token_file)

    run_server(model, attributes_model, host=host, port=port, backbone=backbone, detector=detector, fallback=fallback,
               threshold=threshold, device=device, max_pixels=max_pixels, max_request_mb=max_upload_mb,
               workers=workers, distances=distances, distances_split=distances_split, quiet=quiet,
               max_in_flight=max_in_flight, body_timeout_s=body_timeout, gallery=gallery,
               tokens=tokens, no_token=no_token, rate_per_minute=rate_limit,
               answer={"operating_point": operating_point, "far": far, "abstain": abstain})
