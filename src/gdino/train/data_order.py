"""Which samples a training step sees: the per-epoch batch order and per-sample seeding.

Exact resume rests on both: the batch order of an epoch is a pure function of ``(seed, epoch,
rank)`` (:class:`EpochBatches`) and each sample's augmentation of ``(seed, epoch, index)``
(:class:`SeededDataset`), whatever process or worker loads it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from gdino.errors import GdinoError


class EpochBatches:
    """Batch sampler: a seeded permutation per epoch, split across ranks, resumable mid-epoch.

    Like ``DistributedSampler`` (indices padded by wrapping so every rank gets the same count),
    then cut into batches (the last partial batch is dropped when a rank has at least one full one).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        if n <= 0:
            raise GdinoError("the training dataset is empty")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = (
            n,
            batch_size,
            seed,
            rank,
            world,
            shuffle,
        )
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start`` on."""
        self.epoch, self.start = epoch, start

    def epoch_indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            ).tolist()
        else:
            order = list(range(self.n))
        per_rank = math.ceil(self.n / self.world)
        order = (order * math.ceil(per_rank * self.world / self.n))[: per_rank * self.world]
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        per_rank = math.ceil(self.n / self.world)
        return max(1, per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.epoch_indices()
        for b in range(self.start, len(self)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that item ``i`` of epoch ``e`` is drawn with the RNGs seeded from
    ``(seed, e, i)``, whatever process or worker loads it; the caller's RNG states are untouched."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self._epoch = dataset, seed, 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = int(value)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self._epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        s = (self.seed * 1000003 + self.epoch) * 1000003 + int(index)
        py, npy = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                random.seed(s)
                np.random.seed(s % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(npy)


__all__ = ["EpochBatches", "SeededDataset"]
