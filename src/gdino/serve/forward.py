"""One forward pass for requests with different prompts (the server's batches).

The library's :meth:`gdino.Detector.run` batches images that share a prompt; a server's batch
mixes prompts. Here every (request, prompt chunk) pair is one row of the batch: the images are
encoded once, each caption's text features come from the detector's text cache, and the text
features of the rows are right-padded to a common length with masked tokens (padding rows of the
sub-sentence masks hold only their diagonal, position 0: what the tokenizer does for a padded
batch). Masked tokens take part in no attention and no logit, so every row's result is its
result alone (up to float rounding); decoding then runs per request with its own thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gdino.core.detections import Detections
from gdino.core.runtime import autocast
from gdino.infer.assemble import RawChunk, to_detections
from gdino.infer.detector import Detector, PreparedImage
from gdino.infer.options import DetectOptions
from gdino.infer.prompts import Prompt
from gdino.model.features import TextFeatures


@dataclass(frozen=True)
class Item:
    """One request of a batch: its image, prompt and options (decoding options may differ)."""

    prepared: PreparedImage
    prompt: Prompt
    options: DetectOptions


def forward_key(item: Item) -> tuple:
    """Items with equal keys may share a forward: same preprocessed size, same precision."""
    return (item.prepared.shape, item.options.dtype)


def detect_mixed(detector: Detector, items: Sequence[Item]) -> list[Detections]:
    """Detections of every item (equal :func:`forward_key`) from one forward pass."""
    if not items:
        return []
    keys = {forward_key(it) for it in items}
    if len(keys) != 1:
        raise ValueError(f"items of one forward need equal image sizes and dtypes, got {sorted(map(str, keys))}")
    model = detector.model
    rows = [(i, chunk.caption) for i, it in enumerate(items) for chunk in it.prompt.chunks]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(detector.device, items[0].options.torch_dtype):
            images = detector.encode_images([it.prepared for it in items])  # the detector's image cache
            encoded = [detector.encode_text(caption) for _, caption in rows]  # and its text cache
            index = [i for i, _ in rows]
            image_rows = images if index == list(range(len(items))) else images.select(index)
            text = pad_text([features for _, features in encoded])
            res = model.forward_features(image_rows, text)
            detector.stats["forwards"] += 1
            logits, boxes = res.logits.float().cpu(), res.boxes.float().cpu()
    finally:
        model.train(was_training)
    out = []
    row = 0
    for it in items:
        raw: list[RawChunk] = []
        for _ in it.prompt.chunks:
            raw.append((logits[row : row + 1], boxes[row : row + 1], encoded[row][0]))
            row += 1
        out.append(to_detections(it.prompt, raw, 0, it.prepared.loaded, it.options, detector.tokenizer))
    return out


def pad_text(parts: Sequence[TextFeatures]) -> TextFeatures:
    """Single-prompt text features -> one batch, right-padded with masked tokens."""
    if len(parts) == 1:
        return parts[0]
    length = max(p.features.shape[1] for p in parts)
    return TextFeatures(
        features=torch.cat([_pad(p.features, length, 1, 0.0) for p in parts]),
        token_mask=torch.cat([_pad(p.token_mask, length, 1, False) for p in parts]),
        self_attention_masks=torch.cat([_pad_square(p.self_attention_masks, length) for p in parts]),
        position_ids=torch.cat([_pad(p.position_ids, length, 1, 0) for p in parts]),
    )


def _pad(t: Tensor, length: int, dim: int, value: float | bool | int) -> Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, missing]
    if t.dtype == torch.bool:
        return F.pad(t.to(torch.uint8), pad, value=int(value)).bool()
    return F.pad(t, pad, value=value)


def _pad_square(mask: Tensor, length: int) -> Tensor:
    """``[1, L, L]`` -> ``[1, length, length]``: new rows/columns False except the diagonal."""
    n = mask.shape[-1]
    if n == length:
        return mask
    out = torch.zeros((mask.shape[0], length, length), dtype=mask.dtype, device=mask.device)
    out[:, :n, :n] = mask
    idx = torch.arange(n, length, device=mask.device)
    out[:, idx, idx] = True
    return out
