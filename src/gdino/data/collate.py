"""Batching training samples: pad images bottom/right to the largest one, with pixel masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gdino.data.targets import Target


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        pixel_values: ``[B, 3, H, W]`` (the images' dtype; zeros in the padding).
        pixel_mask: ``[B, H, W]`` bool, True on real pixels.
        targets: one :class:`Target` per image (boxes relative to the unpadded image).
        captions: each image's prompt (``targets[i].caption``).
    """

    pixel_values: Tensor
    pixel_mask: Tensor
    targets: list[Target]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.pixel_values.to(device, non_blocking=non_blocking),
            self.pixel_mask.to(device, non_blocking=non_blocking),
            [t.to(device, non_blocking=non_blocking) for t in self.targets],
            list(self.captions),
        )

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return Batch(self.pixel_values.pin_memory(), self.pixel_mask.pin_memory(), self.targets, self.captions)


def collate(batch: Sequence[tuple[Tensor, Target]], size_divisibility: int = 1) -> Batch:
    """``[(image [3, H_i, W_i], target), ...]`` -> :class:`Batch`, padded to the max H and W.

    ``size_divisibility`` > 1 rounds the padded size up to a multiple of it.
    """
    if not batch:
        raise ValueError("collate needs at least one sample")
    images = [torch.as_tensor(img).as_subclass(Tensor) for img, _ in batch]
    h = max(t.shape[-2] for t in images)
    w = max(t.shape[-1] for t in images)
    if size_divisibility > 1:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    pixel_values = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    pixel_mask = torch.zeros((len(images), h, w), dtype=torch.bool)
    for i, img in enumerate(images):
        pixel_values[i, :, : img.shape[-2], : img.shape[-1]] = img
        pixel_mask[i, : img.shape[-2], : img.shape[-1]] = True
    targets = [t for _, t in batch]
    return Batch(pixel_values, pixel_mask, targets, [t.caption for t in targets])
