"""A dataset into a Parquet dataset of embeddings on Ray Data: items stream through a pool of actors that
run the single-machine per-batch work (:func:`kface.scale.batches.embed_items`), and this process
(the driver) writes their rows as whole shards as they arrive.

Rows already in the output (by path, content sha256 and model key) are skipped inside the actors, so a
rerun after a killed driver computes only what is missing. A killed actor is restarted by Ray and its
batch run again; only finished batches reach the driver, and each shard is written once, atomically,
so every image ends in exactly one row.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict
from typing import Callable, Optional, Sequence

from ..embeddings.parquet import DatasetWriter, rows_table, summarize, verifier_model_key
from .batches import SHARD_ROWS, DatasetItem, EmbedSettings, check_strict, embed_items, vector_size
from .cluster import connect

#: Images per actor call: a few seconds of work here, so that Ray's cost per call (scheduling, moving the
#: block, the driver's bookkeeping) is small against it; a shard never waits on a larger batch than itself.
RAY_BATCH = 128
#: CPUs each actor reserves. Fractional on purpose: on a 2-core machine, actors that reserve whole
#: cores leave none for Ray Data's own read tasks and the pipeline stalls without an error.
ACTOR_CPUS = 0.5


class EmbedActor:
    """A Ray Data actor: one verifier (loaded once) that turns batches of items into rows."""

    def __init__(self, settings: EmbedSettings, done: set, model_key: str, dim: int):
        logging.getLogger("kface").setLevel(logging.WARNING)  # the driver prints the summary
        # No disk cache (the Parquet output is the store) and no face-finding pool: the actor is the worker.
        self.verifier = settings.verifier(cache=False, workers=0)
        one_thread_each(self.verifier)
        self.done = done
        self.model_key = model_key
        self.dim = dim

    def __call__(self, batch):
        items = [DatasetItem(**row) for row in batch.to_pylist()]
        return rows_table(embed_items(self.verifier, items, self.done, self.model_key), self.dim)


def one_thread_each(verifier) -> None:
    """One CPU thread for the detector's and the network's runtimes (before either loads), as in the
    face-finding pool of the single-machine path: the parallelism is the actors'. Runtimes sized to the
    machine's cores in every actor fight over them (measured here: 28-32 ms CPU an image against 14-17)."""
    embedder = verifier.embedder
    face_embedder = getattr(embedder, "embedder", None)  # a trained model's network wraps the face stage
    if face_embedder is None:
        face_embedder, network = embedder, getattr(embedder.backbone, "network", None)  # a shipped network's
    else:
        network = getattr(embedder, "network", None)
    face_embedder.finder.threads = 1
    if network is not None:
        network.threads = 1


def default_workers(ray) -> int:
    """Actors by default: one per CPU of the cluster."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def embed_dataset_ray(items: Sequence[DatasetItem], out: os.PathLike, settings: EmbedSettings, *,
                      address: str = "local", workers: Optional[int] = None, strict: bool = False,
                      progress: bool = False, shard_rows: int = SHARD_ROWS,
                      on_shard: Optional[Callable[[int], None]] = None) -> dict:
    """Embed ``items`` into the Parquet dataset ``out`` on Ray at ``address`` with ``workers`` actors
    (default: one per cluster CPU; each reserves :data:`ACTOR_CPUS`, and a GPU where ``settings.device``
    is cuda). Returns the same summary as :func:`kface.scale.batches.embed_dataset`."""
    ray = connect(address, quiet=not progress)
    # The driver's verifier names the model and the vector size; it loads no network.
    verifier = settings.verifier(cache=False, workers=0)
    key, dim = verifier_model_key(verifier), vector_size(verifier)
    writer = DatasetWriter(out, key, dim)
    done = writer.done()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = progress
    workers = workers or default_workers(ray)
    batch = min(RAY_BATCH, shard_rows)  # a shard never waits on a larger batch than itself
    blocks = min(max(1, len(items)), max(workers, math.ceil(len(items) / batch)))
    dataset = ray.data.from_items([asdict(item) for item in items], override_num_blocks=blocks)
    rows = dataset.map_batches(
        EmbedActor, fn_constructor_kwargs={"settings": settings, "done": done, "model_key": key, "dim": dim},
        batch_size=batch, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=ACTOR_CPUS, num_gpus=1 if settings.device.startswith("cuda") else 0)
    computed = 0
    pending: list = []
    pending_rows = 0

    def flush() -> None:
        nonlocal computed, pending, pending_rows
        import pyarrow as pa

        writer.write(pa.concat_tables(pending))
        computed += pending_rows
        pending, pending_rows = [], 0
        if on_shard is not None:
            on_shard(computed)

    try:
        for block in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
            if strict:
                check_strict(block.select(["error"]).to_pylist())
            if block.num_rows:
                pending.append(block)
                pending_rows += block.num_rows
            if pending_rows >= shard_rows:
                flush()
        if pending_rows:
            flush()
    except BaseException:
        writer.forget_if_empty()
        raise
    finally:
        writer.close()
    return {**summarize(out), "computed": computed, "model": key}
