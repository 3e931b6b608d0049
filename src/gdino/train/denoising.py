"""Contrastive denoising (DINO's CDN) adapted to token-level classes.

Each target box becomes, in every group, one positive query (box corners moved by less than
``box_noise`` x half its size) and one negative query (moved by 1-2x that). A query's content is the
mean of the prompt's projected text features over its class tokens; with probability
``label_noise / 2`` (DN-DETR/DINO's convention) those tokens are first swapped for another class of
the prompt, or a random token span when the prompt has no other class. No new parameters.

Layout of the ``N = 2 * M * G`` queries (``M`` = most boxes in an image, ``G`` groups): group ``g``
holds positives at ``2Mg + j`` and negatives at ``2Mg + M + j`` for box ``j``; slots of images with
fewer boxes are padding (zero content, never in a loss).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gdino.data.targets import Target
from gdino.model.decoder import DenoisingQueries
from gdino.model.features import TextFeatures
from gdino.ops.boxes import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh


@dataclass(frozen=True)
class DenoisingConfig:
    """CDN settings (MM-Grounding-DINO's: 100 queries, label noise 0.5, box noise 1.0)."""

    dn_number: int = 100
    label_noise: float = 0.5
    box_noise: float = 1.0
    eps: float = 1e-3  # inverse_sigmoid clamp; use the model config's ``inverse_sigmoid_eps``
    max_groups: int = 0  # cap on the groups (0: none)


@dataclass
class DenoisingMeta:
    """Which denoising query is which, for the loss. Lists hold one int64 tensor per image."""

    num_groups: int
    group_size: int
    num_queries: int
    pos_query: list[Tensor]
    pos_target: list[Tensor]
    neg_query: list[Tensor]
    neg_target: list[Tensor]
    label_flipped: list[Tensor]  # bool [N] per image: the query's class tokens were swapped

    def flat_positives(self, sizes: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Positive queries as flat CPU indices ``(image, query, target)``; ``target`` indexes the
        batch's concatenated targets (``sizes``: boxes per image)."""
        offsets = [0, *itertools.accumulate(sizes)]
        image = torch.arange(len(self.pos_query)).repeat_interleave(torch.tensor([len(q) for q in self.pos_query]))
        query = torch.cat(self.pos_query) if self.pos_query else torch.zeros(0, dtype=torch.int64)
        target = (
            torch.cat([t + offsets[i] for i, t in enumerate(self.pos_target)]) if self.pos_target else query.clone()
        )
        return image, query.long(), target.long()

    def valid(self, device: torch.device | str = "cpu") -> Tensor:
        """``[B, N]`` bool: True on real (positive or negative) denoising queries."""
        out = torch.zeros((len(self.pos_query), self.num_queries), dtype=torch.bool, device=device)
        for i, (p, n) in enumerate(zip(self.pos_query, self.neg_query)):
            out[i, p.to(device)] = True
            out[i, n.to(device)] = True
        return out


def num_groups(max_boxes: int, dn_number: int, max_groups: int = 0) -> int:
    """Dynamic groups: ``max(1, dn_number // max_boxes)``, at most ``max_groups`` when that is > 0."""
    groups = max(1, dn_number // max(1, max_boxes))
    return min(groups, max_groups) if max_groups > 0 else groups


def denoising_attn_mask(num_dn: int, group_size: int, num_queries: int, device=None) -> Tensor:
    """``[N+Q, N+Q]`` bool, True = may NOT attend: matching queries never see denoising queries and
    denoising groups (``2 * group_size`` queries each) never see each other."""
    total = num_dn + num_queries
    mask = torch.zeros((total, total), dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True
    span = 2 * group_size
    for start in range(0, num_dn, span):
        mask[start : start + span, :start] = True
        mask[start : start + span, start + span : num_dn] = True
    return mask


def noise_boxes(boxes: Tensor, negative: Tensor, scale: float, generator: torch.Generator | None = None) -> Tensor:
    """Move each xyxy corner of cxcywh ``boxes [K,4]`` by ``sign * u * scale * (w/2, h/2)``, with
    ``u ~ U[0,1)`` for positives and ``U[1,2)`` where ``negative [K]`` is True; clamp to [0, 1]."""
    xyxy = cxcywh_to_xyxy(boxes)
    half = torch.cat((boxes[:, 2:], boxes[:, 2:]), -1) / 2
    sign = torch.randint(0, 2, boxes.shape, generator=generator).to(boxes) * 2 - 1
    part = torch.rand(boxes.shape, generator=generator).to(boxes) + negative[:, None].to(boxes)
    return xyxy_to_cxcywh((xyxy + sign * part * half * scale).clamp(0.0, 1.0))


def _random_span(valid_len: int, length: int, generator: torch.Generator | None) -> Tensor | None:
    """1-3 consecutive tokens strictly inside ``[CLS] ... [SEP]``; None when there is no room."""
    inner = valid_len - 2
    if inner < 1:
        return None
    start = 1 + int(torch.randint(0, inner, (1,), generator=generator))
    size = 1 + int(torch.randint(0, min(3, valid_len - 1 - start), (1,), generator=generator))
    span = torch.zeros(length, dtype=torch.bool)
    span[start : start + size] = True
    return span


def noise_labels(
    token_maps: Tensor, candidates: Tensor, valid_len: int, ratio: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Swap the class tokens of each row of ``token_maps [K,L]`` with probability ``ratio / 2`` for a
    different row of ``candidates [C,L]`` (uniformly), or a random span when none differs.

    Returns ``(new_maps [K,L] bool, flipped [K] bool)``.
    """
    maps = token_maps.clone()
    flipped = torch.rand(len(maps), generator=generator) < ratio * 0.5
    for k in flipped.nonzero().flatten().tolist():
        others = candidates[(candidates != maps[k]).any(-1)]
        if len(others):
            maps[k] = others[int(torch.randint(0, len(others), (1,), generator=generator))]
            continue
        span = _random_span(valid_len, maps.shape[1], generator)
        if span is None:
            flipped[k] = False
        else:
            maps[k] = span
    return maps, flipped


def build_denoising(
    targets: Sequence[Target],
    text: TextFeatures,
    num_queries: int,
    config: DenoisingConfig = DenoisingConfig(),
    class_token_maps: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    valid_lens: Sequence[int] | None = None,
) -> tuple[DenoisingQueries, DenoisingMeta] | None:
    """Denoising queries for a batch, or None when the batch has no boxes (or ``dn_number <= 0``).

    The noise and the query layout are drawn on the CPU (one image after the other, so the random
    stream does not depend on the device), then moved in one copy each; the query contents are one
    batched matmul with the text features. Pass host-side ``targets`` and ``valid_lens`` to keep the
    build free of device-to-host copies.

    Args:
        targets: one per image; ``token_map`` columns index the prompt's tokens.
        text: ``model.encode_text(...)`` of the batch's prompts (one prompt is expanded to the batch).
        num_queries: the matching queries the decoder runs (``model.config.num_queries``).
        class_token_maps: optional per image ``[C, >=L]`` bool token maps of every class of the
            prompt (label-noise candidates); default: the distinct classes among the image's boxes.
        generator: CPU random generator (noise is drawn on the CPU, then moved).
        valid_lens: tokens per prompt (default: counted from ``text.token_mask``).
    """
    sizes = [len(t) for t in targets]
    most = max(sizes, default=0)
    if most == 0 or config.dn_number <= 0:
        return None
    b = len(targets)
    text = text.expand(b)
    feats = text.features
    length, device = feats.shape[1], feats.device
    if valid_lens is None:
        valid_lens = text.token_mask.sum(1).tolist()
    elif len(valid_lens) == 1 and b > 1:
        valid_lens = list(valid_lens) * b
    groups = num_groups(most, config.dn_number, config.max_groups)
    n = 2 * most * groups
    weights = torch.zeros((b, n, length), dtype=torch.float32)
    ref = torch.zeros((b, n, 4), dtype=torch.float32)
    meta = DenoisingMeta(groups, most, n, [], [], [], [], [])
    for i, t in enumerate(targets):
        k = sizes[i]
        g = torch.arange(groups).repeat_interleave(k)
        j = torch.arange(k).repeat(groups)
        pos_q, neg_q = 2 * most * g + j, 2 * most * g + most + j
        meta.pos_query.append(pos_q)
        meta.neg_query.append(neg_q)
        meta.pos_target.append(j.clone())
        meta.neg_target.append(j.clone())
        flipped_slots = torch.zeros(n, dtype=torch.bool)
        meta.label_flipped.append(flipped_slots)
        if k == 0:
            continue
        slots = torch.cat((pos_q, neg_q))
        tgt = torch.cat((j, j))
        negative = torch.cat((torch.zeros(len(j), dtype=torch.bool), torch.ones(len(j), dtype=torch.bool)))
        boxes = t.boxes.detach().cpu().float()[tgt]  # host targets (the trainer's): no copy
        noisy = noise_boxes(boxes, negative, config.box_noise, generator)
        maps_cpu = t.token_map.detach().cpu()[:, :length]
        cands = maps_cpu.unique(dim=0) if class_token_maps is None else class_token_maps[i].cpu()[:, :length]
        maps, flipped = noise_labels(maps_cpu[tgt], cands, int(valid_lens[i]), config.label_noise, generator)
        flipped_slots[slots] = flipped
        w = maps.float()
        weights[i, slots, : w.shape[1]] = w / w.sum(-1, keepdim=True).clamp(min=1)
        ref[i, slots] = inverse_sigmoid(noisy, config.eps)
    content = weights.to(device, feats.dtype, non_blocking=True) @ feats  # autocast may lower the matmul
    mask = denoising_attn_mask(n, most, num_queries).to(device, non_blocking=True)
    queries = DenoisingQueries(
        content=content.to(feats.dtype), ref_logits=ref.to(device, feats.dtype, non_blocking=True), attn_mask=mask
    )
    return queries, meta
