"""Dataset adapters: one module per layout, each yielding :class:`~kface.datasets.records.Record` objects.

``load_dataset(kind, root, **options)`` indexes a tree into a :class:`DatasetIndex` (the records as
columns plus a :class:`ProblemReport`); :data:`ADAPTERS` is the registry, one line per layout. A new
layout is one module with an ``iter_records(root, problems, *, progress, **options)`` generator plus
one registry line. :func:`dataset_options` checks the options a command received against the chosen
layout, so every command that takes ``--dataset`` reads them the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Union

from ..errors import InputError
from . import aaf, aging, folder, kface_layout, lfw_gender, manifest
from .common import EDITED_COLUMN, DatasetIndex, IndexBuilder, ProblemReport, age_group
from .records import Record

__all__ = ["ADAPTERS", "Adapter", "DatasetIndex", "EDITED_COLUMN", "ProblemReport", "age_group", "dataset_options",
           "load_dataset", "option_flag"]


@dataclass(frozen=True)
class Adapter:
    """One dataset layout: how to walk it, which options it takes, what its records carry."""

    kind: str
    iter_records: Callable[..., Iterator[Record]]
    options: tuple[str, ...]
    #: Attributes that vary by design within an identity; images per identity are spread over them.
    conditions: tuple[str, ...]
    #: False when every image is a different person (no verification pairs can be made).
    has_identities: bool
    description: str
    #: Canonical, JSON-ready form of the options, recorded in what is written from the index.
    describe: Callable[[dict], dict] = lambda options: {key: str(value) for key, value in options.items()}
    #: Labels (age, gender) its records can carry, for attribute training.
    labels: tuple[str, ...] = ()
    #: True for a set labelled only for attribute training (its identities are not meant for pairs).
    attributes_only: bool = False


ADAPTERS: dict[str, Adapter] = {
    adapter.kind: adapter
    for adapter in [
        Adapter("folder", folder.iter_records, (), (), True,
                "one sub-folder per identity (LFW's layout)"),
        Adapter("kface", kface_layout.iter_records,
                ("accessories", "lights", "expressions", "cameras", "frontal_camera", "box_format"),
                kface_layout.CONDITIONS, True,
                "AIHub K-Face: <ID>/S001/L1/E01/C7.jpg, filterable by accessory, light, expression, camera",
                kface_layout.describe_options),
        Adapter("aging", aging.iter_records, (), aging.CONDITIONS, True,
                "AIHub face aging: images with JSON labels (age at photo, gender, box, landmarks)",
                labels=("age", "gender")),
        Adapter("aaf", aaf.iter_records, ("aaf_images",), (), False,
                "All-Age-Faces: 00000A02.jpg names (age), gender lists; one person per image",
                labels=("age", "gender")),
        Adapter("csv", manifest.iter_records, ("manifest",), (), True,
                "a CSV manifest with columns path,identity[,age][,gender]",
                lambda options: {"manifest": os.path.abspath(options["manifest"])}, labels=("age", "gender")),
        Adapter("lfw-gender", lfw_gender.iter_records, (), (), True,
                "LFW identity folders with the male_names.txt / female_names.txt gender lists",
                labels=("gender",), attributes_only=True),
    ]
}


def option_flag(name: str) -> str:
    """The command-line spelling of a dataset option: ``frontal_camera`` -> ``--frontal-camera``."""
    return "--" + name.replace("_", "-")


def get_adapter(kind: str) -> Adapter:
    """The registry entry for ``kind``, or an :class:`InputError` listing the known kinds."""
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise InputError(f"unknown dataset kind {kind!r}; expected one of {', '.join(ADAPTERS)}") from None


def dataset_options(kind: str, **values: object) -> dict:
    """The options that apply to ``kind``, checked and normalised, from a command's raw values.

    ``None`` means "not given" and is dropped; a given option that the layout does not take is an
    :class:`InputError` (``--lights applies to --dataset kface only``), as are unreadable K-Face
    filters, so a command fails before it walks the tree.
    """
    adapter = get_adapter(kind)
    given = {name: value for name, value in values.items() if value is not None}
    for name in given:
        if name not in adapter.options:
            owners = [other.kind for other in ADAPTERS.values() if name in other.options]
            where = f"--dataset {' or '.join(owners)} only" if owners else "no dataset"
            raise InputError(f"{option_flag(name)} applies to {where}")
    if kind == "kface":
        given = kface_layout.normalize_options(given)
    return given


def load_dataset(kind: str, root: Union[str, os.PathLike], *, progress: bool = False,
                 **options: object) -> DatasetIndex:
    """Index the dataset of layout ``kind`` under ``root``.

    ``options`` are the layout's own (see :data:`ADAPTERS`; ``None`` values are ignored). Returns a
    :class:`DatasetIndex` whose ``problems`` counts what was skipped or doubtful; raises
    :class:`InputError` for a missing root, an unknown kind or option, or a tree with no usable image.
    """
    adapter = get_adapter(kind)
    options = dataset_options(kind, **options)
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise InputError(f"{root_path}: no such dataset folder" if not root_path.exists()
                         else f"{root_path}: not a folder")
    root_path = root_path.resolve()
    problems = ProblemReport()
    builder = IndexBuilder()
    try:
        for record in adapter.iter_records(root_path, problems, progress=progress, **options):
            builder.add(record)
    except PermissionError as exc:
        raise InputError(f"{exc.filename}: permission denied while indexing") from exc
    return builder.build(kind, root_path, problems, adapter.describe(options), adapter.conditions)
