"""Detection losses as pure functions: token-level sigmoid focal loss, L1 and GIoU on matched boxes.

Every function returns an unnormalized float32 sum; the criterion divides by the number of boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from gdino.data.targets import Target
from gdino.ops.boxes import cxcywh_to_xyxy, elementwise_generalized_box_iou


def used_columns(text_mask: Tensor) -> int:
    """1 + the last token column valid in any batch item (columns past it cost nothing)."""
    valid = text_mask.any(0).nonzero()
    return int(valid.max()) + 1 if len(valid) else 0


def token_focal_loss(
    logits: Tensor,
    token_targets: Tensor,
    text_mask: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    query_mask: Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss summed over every (valid) query and every valid token column.

    Args:
        logits: ``[B, Q, L]`` (``-inf`` allowed where ``text_mask`` is False; masked before any math).
        token_targets: ``[B, Q, L]`` 0/1 (bool or float).
        text_mask: ``[B, L]`` bool, True on valid columns.
        query_mask: optional ``[B, Q]`` bool, True on the queries that count (all when None).
    Returns:
        A float32 scalar (a sum, not a mean).
    """
    used = used_columns(text_mask)
    logits, token_targets, text_mask = logits[..., :used], token_targets[..., :used], text_mask[..., :used]
    mask = text_mask[:, None, :].to(logits.device).expand_as(logits)
    if query_mask is not None:
        mask = mask & query_mask[:, :, None].to(logits.device)
    x = logits.float().masked_fill(~mask, 0.0)
    t = token_targets.float()
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    loss = alpha_t * ce * (1 - p_t) ** gamma
    return loss.masked_fill(~mask, 0.0).sum()


def matched_token_targets(
    shape: tuple[int, int, int], indices: Sequence[tuple[Tensor, Tensor]], targets: Sequence[Target], device
) -> Tensor:
    """``[B, Q, L]`` float targets: the matched target's token map for matched queries, zeros elsewhere."""
    b, q, length = shape
    out = torch.zeros((b, q, length), dtype=torch.float32, device=device)
    for i, (qi, ti) in enumerate(indices):
        if qi.numel():
            tm = targets[i].token_map[ti.to(targets[i].token_map.device), :length].to(device, torch.float32)
            out[i, qi.to(device), : tm.shape[1]] = tm
    return out


def box_losses(pred_boxes: Tensor, target_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Summed L1 (cxcywh) and ``1 - GIoU`` of matched pairs ``[N, 4]``; float32 scalars (0 when N = 0)."""
    pred = pred_boxes.float()
    tgt = target_boxes.to(pred.device, torch.float32)
    l1 = (pred - tgt).abs().sum()
    giou = (1 - elementwise_generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt))).sum()
    return l1, giou


def gather_matched_boxes(
    boxes: Tensor, indices: Sequence[tuple[Tensor, Tensor]], targets: Sequence[Target]
) -> tuple[Tensor, Tensor]:
    """Matched ``(predicted [M,4], target [M,4])`` boxes over the batch, from ``boxes [B,Q,4]``."""
    preds = [boxes[i, qi.to(boxes.device)] for i, (qi, _) in enumerate(indices)]
    tgts = [targets[i].boxes[ti.to(targets[i].boxes.device)].to(boxes.device) for i, (_, ti) in enumerate(indices)]
    if not preds:
        return boxes.new_zeros((0, 4)), boxes.new_zeros((0, 4))
    return torch.cat(preds), torch.cat(tgts)


# ------------------------------------------------------------------ every prediction set at once
def focal_loss_per_set(
    logits: Tensor,
    token_targets: Tensor,
    text_mask: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    query_mask: Tensor | None = None,
) -> Tensor:
    """:func:`token_focal_loss` of ``S`` prediction sets in one pass: ``logits [S, B, Q, L']`` (already
    cut to the used token columns ``L'``), ``token_targets`` broadcastable to it, ``text_mask [B, L']``,
    ``query_mask [B, Q]`` or None. Returns ``[S]`` float32 sums."""
    mask = text_mask[:, None, :].to(logits.device).expand(logits.shape[1:])
    if query_mask is not None:
        mask = mask & query_mask[:, :, None].to(logits.device)
    x = logits.float().masked_fill(~mask, 0.0)
    t = token_targets.float()
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t.expand_as(x), reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    loss = alpha_t * ce * (1 - p_t) ** gamma
    return loss.masked_fill(~mask, 0.0).flatten(1).sum(1)


def box_losses_per_set(pred: Tensor, target: Tensor, set_index: Tensor, sets: int) -> tuple[Tensor, Tensor]:
    """Summed L1 and ``1 - GIoU`` per set of matched pairs: ``pred [M, 4]``, ``target [M, 4]`` cxcywh,
    ``set_index [M]`` the set of each pair. Returns two ``[sets]`` float32 tensors."""
    pred = pred.float()
    target = target.to(pred.device, torch.float32)
    l1 = (pred - target).abs().sum(-1)
    giou = 1 - elementwise_generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target))
    zeros = pred.new_zeros(sets)
    return zeros.index_add(0, set_index, l1), zeros.index_add(0, set_index, giou)


def padded_token_maps(targets: Sequence[Target], length: int, device: torch.device | str) -> Tensor:
    """The batch's target token maps concatenated, ``[N, length]`` float 0/1 (zero-padded)."""
    maps = torch.cat([t.token_map[:, :length] for t in targets]).to(device, torch.float32)
    return F.pad(maps, (0, length - maps.shape[1])) if maps.shape[1] < length else maps
