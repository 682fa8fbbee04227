"""This process's place in a training job: one process, or DistributedDataParallel under torchrun."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import KfaceError
from ..util.devices import resolve_device


@dataclass
class Processes:
    """This process's place in a (possibly one-process) training job."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls, device: str) -> "Processes":
        """This process alone, on ``device`` (auto, cpu or cuda)."""
        return cls(torch.device(resolve_device(device)))

    @classmethod
    def from_env(cls, device: str) -> "Processes":
        """One process, or DDP when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, nccl on GPU."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls.single(device)
        resolved = torch.device(resolve_device(device))
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if resolved.type == "cuda":
            resolved = torch.device("cuda", local_rank)
            torch.cuda.set_device(resolved)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        return cls(resolved, rank, local_rank, world_size, owns)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            values = values.to(self.device)
            dist.all_reduce(values)
        return values

    def local_first(self, work: Callable[[bool], object]):
        """``work(progress)`` on each machine's first process, then on the others (which then find the
        cache full). A failure anywhere stops every process, the failing one with its own error."""
        if self.world_size == 1:
            return work(True)
        import torch.distributed as dist

        result, error = None, None
        for turn in (True, False):
            if (self.local_rank == 0) == turn:
                try:
                    result = work(turn)
                except Exception as exc:  # every process must reach the barrier, whatever happened
                    error = exc
            dist.barrier()
        failed = self.all_sum(torch.tensor([float(error is not None)]))
        if error is not None:
            raise error
        if failed.item() > 0:
            raise KfaceError("another training process failed (see its error)")
        return result

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` as the optimiser steps through it: itself, or wrapped in DDP under torchrun."""
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
