"""Pure box math on ``[..., 4]`` tensors.

Formats: ``cxcywh`` (centre x, centre y, width, height) and ``xyxy`` (x0, y0, x1, y1). Functions
work on any float dtype and leading shape; nothing here mutates its input.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` cxcywh -> xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` COCO xywh (top-left corner, size) -> xyxy."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> COCO xywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes (negative extents count as 0)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of xyxy boxes ``a [N,4]`` and ``b [M,4]`` -> ``([N,M], [N,M])``."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny), union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of xyxy boxes -> ``[N, M]`` in [-1, 1]."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=torch.finfo(hull.dtype).tiny)


def elementwise_generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of matched pairs ``a[i]``, ``b[i]`` (both ``[N, 4]`` xyxy) -> ``[N]``."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=torch.finfo(hull.dtype).tiny)


def scale_boxes(boxes: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    """Multiply ``[..., 4]`` boxes (any of the formats above) by ``(w, h, w, h)``."""
    if isinstance(width, Tensor) or isinstance(height, Tensor):
        factors = torch.stack(
            [torch.as_tensor(v, dtype=boxes.dtype, device=boxes.device) for v in (width, height, width, height)],
            dim=-1,
        )
    else:
        factors = boxes.new_tensor([width, height, width, height])
    return boxes * factors


def clip_boxes(boxes: Tensor, width: float, height: float) -> Tensor:
    """Clamp xyxy boxes to ``[0, width] x [0, height]``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0.clamp(0, width), y0.clamp(0, height), x1.clamp(0, width), y1.clamp(0, height)), dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Logit with the official clamps: ``log(clamp(x, eps) / clamp(1 - x, eps))`` after ``x in [0, 1]``.

    The official code uses ``eps=1e-3``; transformers uses ``torch.special.logit(x, eps=1e-5)``,
    which differs for values within 1e-3 of 0 or 1.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
