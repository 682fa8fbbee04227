"""Option decorators and output helpers shared by the kface commands (error handling, logging, JSON)."""
from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Optional

import click

from ..engines import DEFAULT_ENGINE
from ..errors import KfaceError
from ..models import default_model
from ..util.cache import CacheSetting
from .names import BACKBONE_NAMES, DEFAULT_BACKBONE, DETECTOR_NAMES, ENGINE_NAMES, FALLBACK_NAMES


class LazyGroup(click.Group):
    """A command group whose ``lazy`` commands (name -> ``"module:attribute"``) are imported when one is
    run or listed, so ``kface verify`` does not pay for the imports of the training or gallery commands."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name in self.lazy and name not in self.commands:
            module, attribute = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


def handle_errors(command):
    """Turn KfaceError (and Ctrl-C) into one ``error:`` line and the right exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KfaceError as exc:
            if os.environ.get("KFACE_DEBUG") == "1":
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
    """The payload as indented JSON on stdout."""
    click.echo(json.dumps(payload, indent=2, default=str))


# -- options shared by several commands ------------------------------------------------------------
def operating_point_options(abstain: bool = True):
    """``--operating-point NAME`` / ``--far F`` (the model card's thresholds) and, where answers are given,
    ``--abstain``."""
    def decorate(function):
        function = click.option("--far", type=float, default=None,
                                help="Answer at the card's threshold for this false-accept rate "
                                     "(0.01 or 0.001).")(function)
        function = click.option("--operating-point", default=None, metavar="NAME",
                                help="balanced (default), far=1e-2 or far=1e-3: the model card's thresholds, chosen on "
                                     "val groups, with FAR and TAR measured on held-out groups.")(function)
        if abstain:
            function = click.option("--abstain", is_flag=True,
                                    help="Answer 'cannot tell' where the model's calibrated probability is between "
                                         "0.2 and 0.8 (see the card's abstain block).")(function)
        return function
    return decorate


def backbone_option(function):
    return click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
                        help=f"Face backbone: {', '.join(BACKBONE_NAMES)}.")(function)


def detector_options(default: str = "dlib", fallback: str = "none"):
    def decorate(function):
        function = click.option("--max-pixels", type=click.IntRange(1), default=None,
                                help="Refuse images with more pixels than this (default 40,000,000).")(function)
        function = click.option("--fallback", type=click.Choice(FALLBACK_NAMES), default=fallback,
                                show_default=True,
                                help="When no face is found: fail (none) or use the whole image as the face.")(function)
        function = click.option("--detector", type=click.Choice(DETECTOR_NAMES), default=default,
                                show_default=True,
                                help="dlib HOG (with a padded retry), MTCNN, auto (HOG, MTCNN, padded HOG) or none "
                                     "(the whole image is the face).")(function)
        return function

    return decorate


def model_option(function):
    return click.option("--model", help="korean (the shipped Korean face model, the default), dlib (stock dlib at its "
                                        "LFW threshold; with --backbone, that backbone), or a trained "
                                        "runs/NAME/model.pt.")(function)


def engine_option(function):
    return click.option("--engine", type=click.Choice(ENGINE_NAMES), default=DEFAULT_ENGINE, show_default=True,
                        help="What runs the network: onnxruntime (no torch import) or PyTorch (dlib-resnet as "
                             "dlib-torch; a trained model through its PairModel).")(function)


def json_option(help: str = "Print one JSON object on stdout."):
    """``--json`` (as ``as_json``): the command's result as JSON on stdout instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def device_option(function):
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu or cuda (torch backbones, MTCNN, training).")(function)


def cache_options(no_cache_help: str = "Do not read or write the face/embedding cache."):
    """``--no-cache`` and ``--cache-dir``, handed to the command as one ``cache`` value (a
    :class:`~kface.util.cache.CacheSetting`) that it passes on to whatever opens a cache."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            folder = kwargs.pop("cache_dir")
            setting = CacheSetting(enabled=not kwargs.pop("no_cache"), folder=Path(folder) if folder else None)
            return function(*args, cache=setting, **kwargs)

        wrapper = click.option("--cache-dir", type=click.Path(file_okay=False),
                               help="Cache folder for this command [default: $KFACE_CACHE_DIR or ~/.cache/kface]."
                               )(wrapper)
        return click.option("--no-cache", is_flag=True, help=no_cache_help)(wrapper)

    return decorate


def common_options(function):
    function = click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes.")(function)
    return cache_options()(function)


def echo_no_face_notes(messages: list[str], shown: int = 10) -> None:
    """One ``note:`` line per image with no face, the first ``shown`` of them, then a count."""
    for message in messages[:shown]:
        click.echo(f"note: {message}", err=True)
    if len(messages) > shown:
        click.echo(f"note: {len(messages) - shown} more images with no face (stage none in the output)", err=True)

def model_label(model: Optional[str], backbone: str) -> str:
    """The model a command used: the one named, else the default one (or the backbone named instead)."""
    return model or (default_model() if backbone == DEFAULT_BACKBONE else backbone)


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


# -- reports and sweeps ----------------------------------------------------------------------------
def command_line(ctx: click.Context) -> str:
    """The command as typed (the options given on the command line), for a report's "Reproduce" section."""
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
