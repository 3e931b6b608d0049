"""The Detector's feature caches: a small LRU, a content key for preprocessed pixels, and joining
single-image feature bundles back into a batch."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import fields, replace
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``size`` entries, least recently used dropped first (``size <= 0``: keeps nothing)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def pixels_key(pixels: Tensor) -> str:
    """A content hash of a preprocessed image tensor (shape included)."""
    arr = np.ascontiguousarray(pixels.numpy())
    return f"{tuple(arr.shape)}:" + hashlib.blake2b(arr.view(np.uint8).data, digest_size=16).hexdigest()


def cat_features(items: list[Any]) -> Any:
    """Concatenate single-image feature bundles (dataclasses of tensors / tensor lists) on dim 0."""
    first = items[0]
    changes: dict[str, Any] = {}
    for f in fields(first):
        values = [getattr(it, f.name) for it in items]
        if isinstance(values[0], Tensor):
            changes[f.name] = torch.cat(values)
        elif isinstance(values[0], list) and values[0] and isinstance(values[0][0], Tensor):
            changes[f.name] = [torch.cat(parts) for parts in zip(*values)]
    return replace(first, **changes)
