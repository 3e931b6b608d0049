"""Tensor bundles passed between the model's stages (and cached by the detection product)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


def _map(obj, fn):
    """Apply ``fn`` to every tensor field (also inside list fields) of a dataclass instance."""
    changes = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = fn(value)
        elif isinstance(value, list) and value and isinstance(value[0], Tensor):
            changes[f.name] = [fn(v) for v in value]
    return replace(obj, **changes)


@dataclass
class TextFeatures:
    """Projected BERT features of a batch of prompts.

    features ``[B,L,d]``; token_mask ``[B,L]`` bool (True = real token); self_attention_masks
    ``[B,L,L]`` bool (sub-sentence blocks); position_ids ``[B,L]`` long.
    """

    features: Tensor
    token_mask: Tensor
    self_attention_masks: Tensor
    position_ids: Tensor

    def __len__(self) -> int:
        return self.features.shape[0]

    def expand(self, batch: int) -> TextFeatures:
        """Repeat a single prompt for a batch of ``batch`` images."""
        if self.features.shape[0] == batch:  # shape, not len(): stays symbolic under torch.export
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand {len(self)} prompts to a batch of {batch}")
        return _map(self, lambda t: t.expand(batch, *t.shape[1:]))

    def select(self, index: int | list[int] | Tensor) -> TextFeatures:
        """Items ``index`` (an int keeps a batch dimension of 1)."""
        idx = [index] if isinstance(index, int) else index
        return _map(self, lambda t: t[idx])

    def to(self, device: torch.device | str) -> TextFeatures:
        """Move every tensor to ``device``."""
        return _map(self, lambda t: t.to(device))


@dataclass
class ImageFeatures:
    """Multi-scale image maps after the input projections.

    maps: per level ``[B,d,H_l,W_l]``; padding: per level ``[B,H_l,W_l]`` bool (True = padding);
    pos: per level ``[B,d,H_l,W_l]`` sine position embeddings.
    """

    maps: list[Tensor] = field(default_factory=list)
    padding: list[Tensor] = field(default_factory=list)
    pos: list[Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return self.maps[0].shape[0]

    def select(self, index: int | list[int] | Tensor) -> ImageFeatures:
        """Items ``index`` (an int keeps a batch dimension of 1)."""
        idx = [index] if isinstance(index, int) else index
        return _map(self, lambda t: t[idx])

    def expand(self, batch: int) -> ImageFeatures:
        """Repeat one image's features for ``batch`` prompts."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand {len(self)} images to a batch of {batch}")
        return _map(self, lambda t: t.expand(batch, *t.shape[1:]))


@dataclass
class GroundingDINOOutput:
    """Model outputs. See docs/internals.md for every field's shape and meaning."""

    logits: Tensor
    boxes: Tensor
    layer_logits: list[Tensor]
    layer_boxes: list[Tensor]
    enc_logits: Tensor
    enc_boxes: Tensor
    text_mask: Tensor
    dn_logits: list[Tensor] | None = None
    dn_boxes: list[Tensor] | None = None
