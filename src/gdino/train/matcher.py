"""Hungarian matching of predicted queries to target boxes over token-level costs (DETR/DINO style)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.nn import functional as F

from gdino.data.targets import Target
from gdino.ops.boxes import cxcywh_to_xyxy, generalized_box_iou
from gdino.train.losses import used_columns


def token_focal_cost(logits: Tensor, text_mask: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-token focal matching cost ``pos - neg`` of DINO: ``[..., L]`` logits -> ``[..., L]`` float32.

    ``pos = alpha (1-p)^gamma (-log p)``, ``neg = (1-alpha) p^gamma (-log(1-p))``; 0 where
    ``text_mask`` (broadcast to ``logits``) is False, so -inf padding logits never enter arithmetic.
    """
    mask = text_mask.expand_as(logits)
    x = logits.float().masked_fill(~mask, 0.0)
    p = x.sigmoid()
    pos = alpha * (1 - p) ** gamma * -F.logsigmoid(x)
    neg = (1 - alpha) * p**gamma * -F.logsigmoid(-x)
    return (pos - neg).masked_fill(~mask, 0.0)


def normalized_token_maps(token_map: Tensor) -> Tensor:
    """``[N, L]`` bool token maps -> float rows summing to 1 (all-zero rows stay zero)."""
    maps = token_map.float()
    return maps / maps.sum(-1, keepdim=True).clamp(min=1.0)


def target_tensors(targets: Sequence[Target], length: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Every target of the batch concatenated: boxes ``[N, 4]`` float32 and normalized token maps
    ``[N, length]`` (zero-padded past a token map's width), on ``device``."""
    boxes = torch.cat([t.boxes for t in targets]).to(device, torch.float32)
    maps = torch.cat([t.token_map[:, :length] for t in targets]).to(device)
    if maps.shape[1] < length:
        maps = F.pad(maps, (0, length - maps.shape[1]))
    return boxes, normalized_token_maps(maps)


@torch.no_grad()
def match_costs(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Target],
    text_mask: Tensor,
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    text_len: int | None = None,
) -> list[Tensor]:
    """Cost matrices ``[Q, N_b]`` (float32, CPU) per image, computed in one batched pass.

    ``logits [..., B, Q, L]`` / ``boxes [..., B, Q, 4]`` may carry leading set dimensions (decoder
    layers, encoder proposals): the result then lists the images of set 0, then of set 1, ...
    (one device-to-host copy for all of them). Class cost: the per-token focal cost averaged over
    each target's tokens (its normalized positive map); box costs: L1 on cxcywh and negative GIoU.
    ``text_len``: the longest prompt's token count when the caller knows it (else read from
    ``text_mask``, a host sync on an accelerator).
    """
    b, q, _ = logits.shape[-3:]
    sets = logits.shape[:-3].numel()
    sizes = [len(t) for t in targets]
    if sum(sizes) == 0:
        return [logits.new_zeros((q, 0), dtype=torch.float32).cpu() for _ in range(b * sets)]
    used = used_columns(text_mask) if text_len is None else text_len  # columns past the longest prompt cost nothing
    logits, text_mask = logits[..., :used], text_mask[..., :used]
    tgt_boxes, tgt_maps = target_tensors(targets, used, logits.device)
    tgt_boxes = tgt_boxes.to(boxes.device)
    with torch.autocast(logits.device.type, enabled=False):  # float32 costs under AMP
        per_token = token_focal_cost(logits, text_mask[:, None, :].to(logits.device), alpha, gamma).reshape(-1, used)
        out_boxes = boxes.float().reshape(-1, 4)
        c_class = per_token @ tgt_maps.T
        c_bbox = torch.cdist(out_boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(cxcywh_to_xyxy(out_boxes), cxcywh_to_xyxy(tgt_boxes))
        cost = cost_class * c_class + cost_bbox * c_bbox + cost_giou * c_giou
    cost = torch.nan_to_num(cost, nan=0.0, posinf=1e8, neginf=-1e8).view(sets * b, q, -1).cpu()
    offsets = [0, *itertools.accumulate(sizes)]
    return [cost[k, :, offsets[k % b] : offsets[k % b + 1]] for k in range(sets * b)]


def _assign(cost: Tensor) -> tuple[Tensor, Tensor]:
    if cost.shape[1] == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    rows, cols = linear_sum_assignment(cost.double().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


@torch.no_grad()
def hungarian_match(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Target],
    text_mask: Tensor,
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    text_len: int | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Optimal one-to-one assignment of queries to targets, per image (and per set).

    Args:
        logits: ``[B, Q, L]`` token logits (``-inf`` allowed where ``text_mask`` is False), or
            ``[S, B, Q, L]`` for ``S`` prediction sets matched independently.
        boxes: ``[B, Q, 4]`` (or ``[S, B, Q, 4]``) cxcywh in [0, 1].
        targets: one :class:`Target` per image (``token_map`` ``[N, >=L]`` bool, ``boxes`` cxcywh).
        text_mask: ``[B, L]`` bool, True on valid token columns.
    Returns:
        Per image (set-major with sets) ``(query_idx, target_idx)``, int64 CPU tensors of length
        ``min(Q, N_b)``, sorted by query index. The assignment itself is scipy's Hungarian.
    """
    costs = match_costs(logits, boxes, targets, text_mask, cost_class, cost_bbox, cost_giou, alpha, gamma, text_len)
    return [_assign(c) for c in costs]


def flatten_matches(
    indices: Sequence[tuple[Tensor, Tensor]], sizes: Sequence[int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image matches of ``S`` sets (set-major, ``S * B`` entries, ``B = len(sizes)``) as flat
    CPU index tensors ``(set, image, query, target)``; ``target`` indexes the batch's concatenated
    targets (image ``b``'s start at ``sum(sizes[:b])``)."""
    b = len(sizes)
    offsets = [0, *itertools.accumulate(sizes)]
    counts = [len(q) for q, _ in indices]
    k = torch.arange(len(indices)).repeat_interleave(torch.tensor(counts, dtype=torch.int64))
    if not len(indices) or not sum(counts):
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone(), empty.clone(), empty.clone()
    query = torch.cat([q for q, _ in indices])
    target = torch.cat([t + offsets[i % b] for i, (_, t) in enumerate(indices)])
    return k // b, k % b, query, target
