"""Raw model outputs of one image -> :class:`Detections` (classes or phrase mode), in original pixels.

``raw`` holds one ``(logits [B,Q,T], boxes [B,Q,4], input_ids)`` triple per chunk of the prompt
(long class lists run in several chunks); ``b`` picks the image in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gdino.core.detections import Detections
from gdino.core.images import LoadedImage
from gdino.infer.decode import class_scores, decode_phrases, select_per_query, select_topk_chunks
from gdino.infer.options import DetectOptions
from gdino.infer.prompts import Prompt, PromptChunk
from gdino.ops.boxes import cxcywh_to_xyxy

RawChunk = tuple[Tensor, Tensor, Sequence[int]]


def to_detections(
    prompt: Prompt, raw: Sequence[RawChunk], b: int, loaded: LoadedImage, opts: DetectOptions, tokenizer: Any
) -> Detections:
    """Threshold, label, scale, clip, sort, NMS and cap the detections of image ``b``."""
    if prompt.mode == "classes":
        boxes, scores, class_ids = _classes_mode(prompt, raw, b, opts)
        labels = [prompt.class_names[i] for i in class_ids.tolist()]
    else:
        boxes, scores, class_ids, labels = _phrase_mode(prompt, raw, b, opts, tokenizer)
    w, h = loaded.width, loaded.height
    xyxy = cxcywh_to_xyxy(boxes.reshape(-1, 4)) * torch.tensor([w, h, w, h], dtype=torch.float32)
    dets = Detections(xyxy, scores, class_ids, labels, (w, h), list(prompt.class_names), loaded.name)
    if opts.clip:
        dets = dets.clip()
    dets = dets.sort()
    if opts.nms_iou is not None:
        dets = dets.nms(opts.nms_iou)
    if opts.max_detections is not None and len(dets) > opts.max_detections:
        dets = dets[: opts.max_detections]
    return dets


def _classes_mode(
    prompt: Prompt, raw: Sequence[RawChunk], b: int, opts: DetectOptions
) -> tuple[Tensor, Tensor, Tensor]:
    scores = [class_scores(logits[b], _positive_map(chunk)) for (logits, _, _), chunk in zip(raw, prompt.chunks)]
    boxes_parts, scores_parts, class_parts = [], [], []
    if opts.topk is not None:
        # one top-k over all chunks; with fixed-size chunks one per chunk, as mmdetection's chunked_size
        n = len(scores)
        groups = [[i] for i in range(n)] if prompt.chunk_size is not None else [list(range(n))]
        for g in groups:
            sel = select_topk_chunks([scores[i] for i in g], [prompt.chunks[i].class_indices for i in g], opts.topk)
            if sel.chunks is None:
                raise RuntimeError("select_topk_chunks gave no chunk ids")
            keep = sel.scores > opts.box_threshold
            chunk_ids, queries = [g[c] for c in sel.chunks[keep].tolist()], sel.queries[keep].tolist()
            boxes_parts.append(
                torch.stack([raw[c][1][b, q] for c, q in zip(chunk_ids, queries)]) if queries else torch.zeros(0, 4)
            )
            scores_parts.append(sel.scores[keep])
            class_parts.append(sel.class_ids[keep])
        return torch.cat(boxes_parts), torch.cat(scores_parts), torch.cat(class_parts)
    for (_, chunk_boxes, _), chunk, sc in zip(raw, prompt.chunks, scores):
        sel1 = select_per_query(sc, opts.box_threshold)
        boxes_parts.append(chunk_boxes[b, sel1.queries])
        scores_parts.append(sel1.scores)
        class_parts.append(torch.as_tensor(chunk.class_indices, dtype=torch.long)[sel1.class_ids])
    return torch.cat(boxes_parts), torch.cat(scores_parts), torch.cat(class_parts)


def _phrase_mode(
    prompt: Prompt, raw: Sequence[RawChunk], b: int, opts: DetectOptions, tokenizer: Any
) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    boxes_parts, scores_parts, class_parts, labels = [], [], [], []
    for (logits, boxes, input_ids), chunk in zip(raw, prompt.chunks):
        ps = decode_phrases(
            logits[b],
            input_ids,
            tokenizer,
            opts.box_threshold,
            opts.text_threshold,
            remove_combined=opts.remove_combined,
        )
        boxes_parts.append(boxes[b, ps.queries])
        scores_parts.append(ps.scores)
        seg = chunk.segment_classes
        class_parts.append(
            torch.tensor([seg[i] if 0 <= i < len(seg) else -1 for i in ps.phrase_ids.tolist()], dtype=torch.long)
        )
        labels.extend(ps.labels)
    return torch.cat(boxes_parts), torch.cat(scores_parts), torch.cat(class_parts), labels


def _positive_map(chunk: PromptChunk) -> Tensor:
    if chunk.positive_map is None:
        raise ValueError(f"prompt chunk {chunk.caption!r} has no positive map (not a classes-mode prompt)")
    return chunk.positive_map
