"""One forward pass for requests with different prompts (the server's batches).

The library's :meth:`gdino.Detector.run` batches images that share a prompt; a server's batch
mixes prompts. Here every (request, prompt chunk) pair is one row of the batch: the images are
encoded once, each caption's text features come from the detector's text cache, and the text
features of the rows are right-padded to a common length with masked tokens (padding rows of the
sub-sentence masks hold only their diagonal, position 0: what the tokenizer does for a padded
batch). Masked tokens take part in no attention and no logit, so every row's result is its
result alone (up to float rounding); decoding then runs per request with its own thresholds.

A detector whose model is an exported graph (``gdino serve --runtime onnxruntime|openvino``)
batches the same way: its text encodings are the tokenized captions (and, for a split export, the
text graph's features), padded alike by ``RuntimeText.pad_batch``, and the graph runs all rows
in one call (dynamic batch and text length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gdino.core.detections import Detections
from gdino.core.runtime import autocast
from gdino.infer.assemble import RawChunk, to_detections
from gdino.infer.detector import Detector, PreparedImage
from gdino.infer.options import DetectOptions
from gdino.infer.prompts import Prompt
from gdino.model.features import TextFeatures
from gdino.text.padding import pad_right, pad_square


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


def pad_text(parts: Sequence[Any]) -> Any:
    """Single-prompt text encodings -> one batch, right-padded with masked tokens.

    The model's :class:`TextFeatures` are padded here. Any other text encoding pads itself with
    its ``pad_batch`` (an exported graph's ``gdino.export.runtimes.RuntimeText``: the graph takes
    the token ids and masks, which are padded as the tokenizer pads a batch)."""
    if len(parts) == 1:
        return parts[0]
    if not isinstance(parts[0], TextFeatures):
        return type(parts[0]).pad_batch(parts)
    length = max(p.features.shape[1] for p in parts)
    return TextFeatures(
        features=torch.cat([pad_right(p.features, length, 1, 0.0) for p in parts]),
        token_mask=torch.cat([pad_right(p.token_mask, length, 1, False) for p in parts]),
        self_attention_masks=torch.cat([pad_square(p.self_attention_masks, length) for p in parts]),
        position_ids=torch.cat([pad_right(p.position_ids, length, 1, 0) for p in parts]),
    )
