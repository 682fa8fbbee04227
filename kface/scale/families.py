"""``kface benchmark families --ray ADDRESS``: each recipe's folds trained and scored as Ray tasks, the
tables written by the driver alone (:func:`kface.evaluation.family_run.run_benchmark` with this runner)."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

from ..errors import KfaceError
from ..evaluation.family_run import FoldRunner
from ..evaluation.family_scoring import FoldJob, FoldResult, run_fold
from .cluster import connect

#: CPUs each fold task reserves. Fractional on purpose, as for the embedding actors: on a 2-core machine,
#: tasks that reserve whole cores leave none for Ray's own work.
FOLD_CPUS = 0.5


def ray_fold_runner(address: str, *, quiet: bool = False,
                    log: Callable[[str], None] = lambda text: None) -> FoldRunner:
    """A fold runner for :func:`kface.evaluation.family_run.run_benchmark` on Ray at ``address``: every
    fold of every recipe row is one task, all submitted at once; each row's results come back in order.

    The workers read the dataset and write each fold's training run under ``--out`` themselves, so on a
    cluster both are paths every node sees (shared storage), as for ``kface embed --ray``."""
    ray = connect(address, quiet=quiet)
    task = ray.remote(num_cpus=FOLD_CPUS)(run_fold)

    def run(row_jobs: list[list[FoldJob]]) -> Iterator[list[FoldResult]]:
        # No face-finding process pool inside a task (workers=0): the tasks are the parallelism.
        refs = [[task.options(num_gpus=1 if job.device.startswith("cuda") else 0).remote(replace(job, workers=0))
                 for job in jobs] for jobs in row_jobs]
        log(f"{sum(map(len, refs))} fold tasks ({len(refs)} recipe rows) submitted to Ray")
        return _gather(ray, refs)

    return run


def _gather(ray, refs: list[list]) -> Iterator[list[FoldResult]]:
    """Each row's results as its tasks finish; a kface error inside a task is raised here as itself (one
    ``error:`` line), other failures as Ray reports them."""
    for row in refs:
        try:
            yield ray.get(row)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, KfaceError):
                raise exc.cause from None
            raise
