"""Process-group set-up for torchrun jobs, per-rank seeding and the collective flags the loop needs."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import distributed as dist


@dataclass
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun job described by the environment (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), dev


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch, Python and NumPy (each rank differently)."""
    s = seed + 7919 * rank
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is True on any rank (one all-reduce in a multi-process job)."""
    if info.world <= 1:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    if info.world <= 1:
        return [value]
    gathered: list[Any] = [None] * info.world
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing without a process group)."""
    if info.world > 1:
        dist.barrier()


__all__ = ["DistInfo", "any_rank", "barrier", "gather_objects", "init_distributed", "seed_everything"]
