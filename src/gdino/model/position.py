"""Sine position embeddings: image maps (temperature 20), text position ids, and query boxes.

All three follow the official code's channel layout: sin on even and cos on odd channels,
interleaved; image maps are ``[pos_y, pos_x]``; boxes are ``(y, x, w, h)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TWO_PI = 2 * math.pi


def _dim_t(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    idx = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / num_feats)


def _interleave(x: Tensor) -> Tensor:
    """``[..., F]`` -> sin of even / cos of odd channels, interleaved back to ``[..., F]``."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


def image_position_embedding(padding_mask: Tensor, num_feats: int, temperature: float = 20.0) -> Tensor:
    """Normalized sine embedding of a feature map.

    Args:
        padding_mask: ``[B, H, W]`` bool, True on padded positions.
        num_feats: channels per axis (the output has ``2 * num_feats``).
    Returns:
        ``[B, 2*num_feats, H, W]`` float32 (``[pos_y, pos_x]``), cumulative positions normalized by the
        last row/column (eps 1e-6) and scaled by 2*pi, as the official ``PositionEmbeddingSineHW``.
    """
    not_mask = ~padding_mask
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * TWO_PI
    x = x / (x[:, :, -1:] + eps) * TWO_PI
    dim_t = _dim_t(num_feats, temperature, padding_mask.device)
    h, w = padding_mask.shape[1:]
    # Usually every row of x (and every column of y) is the same: no padding, or padding only at an
    # image's bottom and right. Then one row (column) is embedded and broadcast: the same values for
    # 1/h (1/w) of the sines. The test reads the mask, so only on the CPU (on a GPU it would wait for
    # the device) and not under export (a data-dependent branch).
    if padding_mask.device.type == "cpu" and not torch.compiler.is_exporting():
        if bool((x == x[:, :1]).all()) and bool((y == y[:, :, :1]).all()):
            pos_x = _interleave(x[:, :1, :, None] / dim_t).expand(-1, h, -1, -1)
            pos_y = _interleave(y[:, :, :1, None] / dim_t).expand(-1, -1, w, -1)
            return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
    pos_x = _interleave(x[..., None] / dim_t)
    pos_y = _interleave(y[..., None] / dim_t)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def text_position_embedding(position_ids: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of sub-sentence position ids ``[B, L]`` -> ``[B, L, num_feats]`` float32."""
    scaled = position_ids[..., None].float() * TWO_PI / _dim_t(num_feats, temperature, position_ids.device)
    return _interleave(scaled)


def box_sine_embedding(boxes: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of ``[..., 4]`` cxcywh boxes -> ``[..., 4*num_feats]`` in (y, x, w, h) order."""
    dim_t = _dim_t(num_feats, temperature, boxes.device)
    parts = [_interleave(boxes[..., i, None].float() * TWO_PI / dim_t) for i in range(4)]
    x, y, w, h = parts
    return torch.cat((y, x, w, h), dim=-1)
