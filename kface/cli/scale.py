"""``kface embed --out NAME.parquet``: a dataset (or image arguments) into a Parquet dataset of
embeddings, on this machine or on Ray (``--ray ADDRESS``); the options and the summary it prints."""
from __future__ import annotations

from typing import Optional, Union

import click

from ..errors import InputError
from ..scale.batches import SHARD_ROWS, embed_dataset
from ..scale.embed import embed_dataset_ray
from ..util.cache import CacheSetting
from .options import print_json

PARQUET_SUFFIX = ".parquet"


def is_parquet(out: str) -> bool:
    """True when ``out`` names a Parquet dataset (a folder of shards) rather than an .npz file."""
    return out.rstrip("/").endswith(PARQUET_SUFFIX)


def ray_options(function):
    """--ray, --ray-workers and --shard-rows (the Parquet output's options)."""
    function = click.option("--shard-rows", type=click.IntRange(1), default=None,
                            help="With a .parquet --out: rows per shard file (a killed run redoes at most one "
                                 "shard's images) [default: 512].")(function)
    function = click.option("--ray-workers", type=click.IntRange(1), default=None,
                            help="With --ray: embedding actors [default: one per CPU of the cluster].")(function)
    function = click.option("--ray", "ray_address", metavar="ADDRESS",
                            help="Run on Ray Data: local (Ray on this machine's cores), auto (the cluster this "
                                 "machine belongs to) or ray://HOST:PORT. Needs a .parquet --out.")(function)
    return function


def embed_to_parquet(items, out: str, settings, *, strict: bool, ray_address: Optional[str],
                     ray_workers: Optional[int], shard_rows: Optional[int], workers: Optional[int],
                     cache: Union[bool, CacheSetting],
                     quiet: bool, as_json: bool) -> None:
    """Embed ``items`` into the Parquet dataset ``out`` and print the summary."""
    shard_rows = shard_rows or SHARD_ROWS
    if ray_address:
        summary = embed_dataset_ray(items, out, settings, address=ray_address, workers=ray_workers, strict=strict,
                                    progress=not quiet, shard_rows=shard_rows)
    else:
        summary = embed_dataset(items, out, settings, strict=strict, cache=cache, workers=workers,
                                progress=not quiet, shard_rows=shard_rows)
    summary = {"out": out, "inputs": len(items), **summary}
    if as_json:
        print_json(summary)
    elif not quiet:
        errors = sum(summary["errors"].values())
        kinds = ", ".join(f"{count} {kind}" for kind, count in summary["errors"].items())
        click.echo(f"wrote {out}: {summary['rows']} rows, {summary['found']} faces found, {errors} errors"
                   f"{f' ({kinds})' if kinds else ''}; {summary['computed']} computed in this run", err=True)


def check_parquet_options(out: str, ray_address: Optional[str], ray_workers, shard_rows, dataset, skip_bad) -> None:
    """Options that only a Parquet output takes, and a dataset that only a Parquet output can hold."""
    if is_parquet(out):
        if skip_bad:
            raise InputError("--skip-bad applies to .npz outputs: a .parquet output keeps every input as a row")
        return
    for given, flag in ((ray_address, "--ray"), (ray_workers, "--ray-workers"), (shard_rows, "--shard-rows"),
                        (dataset, "--dataset")):
        if given:
            raise InputError(f"{flag} writes a Parquet dataset: give --out NAME.parquet")
