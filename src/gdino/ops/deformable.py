"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch: no compiled extension.

``multi_scale_deformable_sample`` is the pure sampling function (bilinear, zero padding, the
pixel-centre convention of the original CUDA kernel). Two implementations compute it:
``"gather"`` (default) folds the attention weights into the four bilinear corner weights and does one
weighted gather-sum over all levels with ``embedding_bag``, about 3x faster than ``"grid_sample"``
(the official PyTorch fallback: one ``grid_sample`` per level, then stack, multiply and sum), which is
kept as the reference. ``MultiScaleDeformableAttention`` is the module with the official parameter
names (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``).

Low precision: fp16/bf16 inputs are sampled in float32 on the CPU (where half-precision
``grid_sample`` is slow or unsupported) and cast back; on CUDA they are sampled natively. Under
autocast the module runs like any other: linear layers in the autocast dtype, sampling as above.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_sample(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    method: str = "gather",
) -> Tensor:
    """Weighted bilinear sampling of a multi-level value map.

    Args:
        value: ``[B, S, heads, C]`` with ``S = sum(h * w)`` over levels (row-major per level).
        spatial_shapes: ``(h, w)`` per level.
        sampling_locations: ``[B, Q, heads, levels, points, 2]`` (x, y) in [0, 1] of each level.
        attention_weights: ``[B, Q, heads, levels, points]`` (already normalized).

    Returns:
        ``[B, Q, heads * C]``.
    """
    if method == "gather":
        return _sample_gather(value, spatial_shapes, sampling_locations, attention_weights)
    if method != "grid_sample":
        raise ValueError(f"unknown deformable sampling method {method!r} (gather, grid_sample)")
    b, _, heads, c = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    values = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * heads, c, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*heads, Q, points, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*heads, C, Q, levels*points]
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (stacked * weights).sum(-1)  # [B*heads, C, Q]
    return out.view(b, heads * c, q).transpose(1, 2).contiguous()


_PAD = 2  # zero border around every level: all four corners of any clamped location are in range


def _sample_gather(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """Bilinear corners as rows of a zero-bordered value table, summed by ``embedding_bag``.

    Locations are clamped to [-1.5, size + 0.5] pixels: every point the kernel would skip (all
    corners outside) then reads only border zeros, so no per-corner validity test is needed.
    """
    b, _, heads, c = value.shape
    _, q, _, levels, points, _ = locations.shape
    device = value.device
    # value table: per (batch, head), every level zero-padded by _PAD on each side, levels concatenated
    tables, starts, start = [], [], 0
    for lvl, part in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[lvl]
        grid = part.view(b, h, w, heads, c).permute(0, 3, 4, 1, 2)  # [B, heads, C, h, w]
        grid = F.pad(grid, (_PAD, _PAD, _PAD, _PAD))
        tables.append(grid.flatten(3))
        starts.append(start)
        start += (h + 2 * _PAD) * (w + 2 * _PAD)
    table = torch.cat(tables, -1).transpose(2, 3).reshape(b * heads * start, c)  # rows: (b, head, pos)

    # work in rows (b, head, q) from the start so the corner tensors need no permuting copy
    locations = locations.transpose(1, 2).contiguous()  # [B, heads, Q, levels, points, 2]
    weights = weights.transpose(1, 2).contiguous()
    dims = torch.tensor([[h, w, s0] for (h, w), s0 in zip(shapes, starts)], device=device, dtype=torch.int32)
    hs = dims[:, 0].view(levels, 1).to(locations.dtype)
    ws = dims[:, 1].view(levels, 1).to(locations.dtype)
    wp = (dims[:, 1] + 2 * _PAD).view(levels, 1)
    x = torch.minimum(torch.nan_to_num(locations[..., 0] * ws - 0.5, nan=-1.5).clamp_(min=-1.5), ws + 0.5)
    y = torch.minimum(torch.nan_to_num(locations[..., 1] * hs - 0.5, nan=-1.5).clamp_(min=-1.5), hs + 0.5)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    rows = torch.arange(b * heads, device=device, dtype=torch.int32).view(b, heads, 1, 1, 1) * start
    base = rows + dims[:, 2].view(levels, 1) + (y0.int() + _PAD) * wp + (x0.int() + _PAD)
    corner = torch.stack((torch.zeros_like(wp), torch.ones_like(wp), wp, wp + 1), -1)  # [levels, 1, 4]
    index = (base[..., None] + corner).view(b * heads * q, -1)
    wy = torch.stack((1 - fy, fy), -1) * weights[..., None]
    wx = torch.stack((1 - fx, fx), -1)
    weight = (wy[..., :, None] * wx[..., None, :]).view(b * heads * q, -1).to(table.dtype)
    out = F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")
    return out.view(b, heads, q, c).permute(0, 2, 1, 3).reshape(b, q, heads * c)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``n_levels`` feature maps, ``n_points`` samples per head and level."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.method = "gather"  # or "grid_sample" (the official PyTorch path), see module docstring
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on a ring of directions, one per head, growing per point."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Tensor | list[tuple[int, int]],
        level_start_index: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``query`` ``[B,Q,d]`` to ``value`` ``[B,S,d]``.

        reference_points: ``[B,Q,levels,2]`` (x, y) or ``[B,Q,levels,4]`` (cx, cy, w, h) in [0, 1];
        key_padding_mask: ``[B,S]`` True at padded image positions (their values are zeroed).
        ``level_start_index`` is accepted for signature compatibility; levels follow ``spatial_shapes``.
        """
        b, q, _ = query.shape
        s = value.shape[1]
        shapes = _as_shape_list(spatial_shapes)
        if sum(h * w for h, w in shapes) != s:
            raise ValueError(f"spatial shapes {shapes} do not add up to {s} value tokens")
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(b, s, heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(b, q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(b, q, heads, levels * points)
        weights = weights.softmax(-1).view(b, q, heads, levels, points)

        value_dtype = compute_dtype = value.dtype
        if value.device.type == "cpu" and value.dtype in (torch.float16, torch.bfloat16):
            compute_dtype = torch.float32
        ref = reference_points.to(compute_dtype)
        offsets = offsets.to(compute_dtype)
        if ref.shape[-1] == 2:
            normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=compute_dtype, device=value.device)
            locations = ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif ref.shape[-1] == 4:
            locations = ref[:, :, None, :, None, :2] + offsets / points * ref[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {tuple(ref.shape)}")
        out = multi_scale_deformable_sample(
            value.to(compute_dtype), shapes, locations, weights.to(compute_dtype), self.method
        )
        return self.output_proj(out.to(value_dtype))


def _as_shape_list(spatial_shapes: Tensor | list[tuple[int, int]]) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]
