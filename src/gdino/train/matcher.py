"""Hungarian matching of predicted queries to target boxes over token-level costs (DETR/DINO style)."""

from __future__ import annotations

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
) -> list[Tensor]:
    """Cost matrices ``[Q, N_b]`` (float32, CPU) per image, computed in one batched pass.

    Class cost: the per-token focal cost averaged over each target's tokens (its normalized
    positive map); box costs: L1 on cxcywh and negative GIoU.
    """
    b, q, _ = logits.shape
    sizes = [len(t) for t in targets]
    if sum(sizes) == 0:
        return [logits.new_zeros((q, 0), dtype=torch.float32).cpu() for _ in range(b)]
    used = used_columns(text_mask)  # token columns past the longest prompt cost nothing
    logits, text_mask, length = logits[..., :used], text_mask[..., :used], used
    tgt_boxes = torch.cat([t.boxes for t in targets]).to(boxes.device, torch.float32)
    tgt_maps = torch.cat([normalized_token_maps(t.token_map[:, :length]) for t in targets]).to(logits.device)
    if tgt_maps.shape[1] < length:
        tgt_maps = F.pad(tgt_maps, (0, length - tgt_maps.shape[1]))
    with torch.autocast(logits.device.type, enabled=False):  # float32 costs under AMP
        per_token = token_focal_cost(logits, text_mask[:, None, :].to(logits.device), alpha, gamma).flatten(0, 1)
        out_boxes = boxes.float().flatten(0, 1)
        c_class = per_token @ tgt_maps.T
        c_bbox = torch.cdist(out_boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(cxcywh_to_xyxy(out_boxes), cxcywh_to_xyxy(tgt_boxes))
        cost = cost_class * c_class + cost_bbox * c_bbox + cost_giou * c_giou
    cost = torch.nan_to_num(cost, nan=0.0, posinf=1e8, neginf=-1e8).view(b, q, -1).cpu()
    return [c[i] for i, c in enumerate(cost.split(sizes, -1))]


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
) -> list[tuple[Tensor, Tensor]]:
    """Optimal one-to-one assignment of queries to targets, per image.

    Args:
        logits: ``[B, Q, L]`` token logits (``-inf`` allowed where ``text_mask`` is False).
        boxes: ``[B, Q, 4]`` cxcywh in [0, 1].
        targets: one :class:`Target` per image (``token_map`` ``[N, >=L]`` bool, ``boxes`` cxcywh).
        text_mask: ``[B, L]`` bool, True on valid token columns.
    Returns:
        Per image ``(query_idx, target_idx)``, int64 CPU tensors of length ``min(Q, N_b)``,
        sorted by query index.
    """
    result = []
    for cost in match_costs(logits, boxes, targets, text_mask, cost_class, cost_bbox, cost_giou, alpha, gamma):
        if cost.shape[1] == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            result.append((empty, empty.clone()))
            continue
        rows, cols = linear_sum_assignment(cost.double().numpy())
        result.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return result
