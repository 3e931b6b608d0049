"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch: no compiled extension.

``multi_scale_deformable_sample`` is the pure sampling function (bilinear ``grid_sample`` per level,
zero padding, pixel-centre convention of the original CUDA kernel); ``MultiScaleDeformableAttention``
is the module with the official parameter names (``sampling_offsets``, ``attention_weights``,
``value_proj``, ``output_proj``).

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
        out = multi_scale_deformable_sample(value.to(compute_dtype), shapes, locations, weights.to(compute_dtype))
        return self.output_proj(out.to(value_dtype))


def _as_shape_list(spatial_shapes: Tensor | list[tuple[int, int]]) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]
