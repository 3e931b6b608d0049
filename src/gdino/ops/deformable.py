"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch: no compiled extension.

``multi_scale_deformable_sample`` is the pure sampling function (bilinear, zero padding, the
pixel-centre convention of the original CUDA kernel). Two implementations compute it:
``"gather"`` folds the attention weights into the four bilinear corner weights and does one
weighted gather-sum over all levels with ``embedding_bag``, about 3x faster than ``"grid_sample"``
(the official PyTorch fallback: one ``grid_sample`` per level, then stack, multiply and sum) in a
forward pass. With a gradient recorded the gather runs through a hand-written backward
(``gdino.ops.deformable_gather.GatherSample``: ``embedding_bag``'s own backward sorts every index
and was twice as slow as ``grid_sample``'s); forward plus backward then takes 0.45 s against
``grid_sample``'s 1.0 s on a Swin-T 512 encoder layer (batch 2, one CPU thread) and 37 vs 52 ms
on the smoke-training shapes. ``"auto"`` (the default) gathers, except in training off the CPU,
where ``grid_sample`` stays (its CUDA backward has not been measured against the gather's). In
training the pixel coordinates are computed with ``grid_sample``'s own arithmetic, so that a
location on an exact pixel centre (a kink of bilinear sampling, where the derivative is one-sided)
lands on the same side of it in both paths.
Under ``torch.export`` (the ONNX export) the module samples with ``"corners"``: four plain row
gathers and weighted sums, with symbolic level sizes and no ``embedding_bag`` or ``GridSample``.
``MultiScaleDeformableAttention`` is the module with the official parameter names
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``).

Low precision: on the CPU, fp16/bf16 sampling locations and attention weights are computed in
float32 (a bf16 pixel coordinate is off by up to half a pixel on a 167-pixel-wide level); the
gather then reads the value table in its own dtype (half the bytes of float32; ``embedding_bag``
accumulates in float32; in training its table is float32), while ``grid_sample`` and ``corners`` sample a float32 copy (half-precision
``grid_sample`` is slow or unsupported there) and cast back. On CUDA they are sampled natively. Under
autocast the module runs like any other: linear layers in the autocast dtype, sampling as above.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdino.ops.deformable_gather import gather_sample, level_sizes, on_device
from gdino.ops.sampling_pixels import training_locations, training_pixels


def multi_scale_deformable_sample(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    method: str = "auto",
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
    method = _resolve(method, value, sampling_locations, attention_weights)
    if method == "gather":
        if _recording(value, sampling_locations, attention_weights):
            pixels = _grid_sample_pixels(sampling_locations, spatial_shapes)
        else:
            size = level_sizes(spatial_shapes, sampling_locations)
            pixels = sampling_locations * size[:, None] - 0.5  # grid_sample's align_corners=False convention
        return gather_sample(value, spatial_shapes, pixels, attention_weights)
    if method == "corners":
        pixels = sampling_locations * level_sizes(spatial_shapes, sampling_locations)[:, None] - 0.5
        return _gather_corners(value, spatial_shapes, pixels, attention_weights)
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


def _recording(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _grid_sample_pixels(locations: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
    """Pixel coordinates of normalized locations in ``grid_sample``'s own float arithmetic (its CPU
    kernel: ``grid = 2 * loc - 1``, then ``(grid + 1) * size / 2 - 0.5``). Used when a gradient is
    recorded: a location on an exact pixel centre, where bilinear sampling has a kink (at
    initialization every encoder sample is one: pixel-centre references plus integer offsets),
    then falls on the same side of it as in ``grid_sample`` and gets the same one-sided derivative."""
    half = level_sizes(shapes, locations)[:, None] / 2
    return (2 * locations - 1 + 1) * half - 0.5


def _resolve(method: str, *tensors: Tensor) -> str:
    """``"auto"`` -> ``"gather"``, except ``"grid_sample"`` for a recorded gradient off the CPU
    (module docstring)."""
    if method == "auto":
        return "grid_sample" if _recording(*tensors) and tensors[0].device.type != "cpu" else "gather"
    if method not in ("gather", "grid_sample", "corners"):
        raise ValueError(f"unknown deformable sampling method {method!r} (auto, gather, grid_sample, corners)")
    return method


def _gather_corners(value: Tensor, shapes: list[tuple[int, int]], pixels: Tensor, weights: Tensor) -> Tensor:
    """The bilinear sampling as plain tensor operations, for export (ONNX ``Gather`` + ``ReduceSum``).

    Same inputs and result as :func:`gather_pixels` (``pixels`` are not modified): for each of the
    four corners, one row gather from the ``[B*S*heads, C]`` value table (rows clamped into their
    level) weighted by attention x bilinear weight x in-range, summed over the level x point samples.
    Level sizes may be symbolic: nothing loops over a data-dependent count.
    """
    b, s, heads, c = value.shape
    _, q, _, levels, points, _ = pixels.shape
    device = value.device
    lp = levels * points
    level = torch.arange(levels, device=device).repeat_interleave(points)
    size = level_sizes(shapes, pixels)[level]  # [lp, 2] (w, h) as floats
    starts = [0]
    for h, wd in shapes[:-1]:
        starts.append(starts[-1] + h * wd)
    first = on_device(torch.tensor(starts, dtype=torch.long), device)[level]  # [lp]
    width = on_device(torch.tensor([w for _, w in shapes], dtype=torch.long), device)[level]
    # rows of (batch, head) in the table: (batch * S + position) * heads + head
    base = (torch.arange(b, device=device) * s).view(b, 1, 1, 1)
    head = torch.arange(heads, device=device).view(1, 1, heads, 1)
    xy = pixels.reshape(b, q, heads, lp, 2).nan_to_num(nan=-1.5)
    xy = torch.minimum(torch.maximum(xy, torch.full_like(size, -1.5)), size + 0.5)
    corner = xy.floor()
    frac = xy - corner
    fx, fy = frac.unbind(-1)
    x0, y0 = corner.long().unbind(-1)
    attn = weights.reshape(b, q, heads, lp)
    out = value.new_zeros(b * q * heads, c)
    table = value.reshape(b * s * heads, c)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x, y = x0 + dx, y0 + dy
        inside = (x >= 0) & (x < size[:, 0]) & (y >= 0) & (y < size[:, 1])
        position = first + y.clamp(min=0) * width + x.clamp(min=0)
        position = torch.minimum(position, first + (size[:, 0] * size[:, 1]).long() - 1)  # inside the level
        rows = ((base + position) * heads + head).reshape(-1)
        bilinear = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        weight = (attn * bilinear * inside.to(attn.dtype)).reshape(-1, lp, 1)
        out = out + (table.index_select(0, rows).view(-1, lp, c) * weight).sum(1)
    return out.view(b, q, heads * c)


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
        # or "gather" / "grid_sample" (the official PyTorch path) / "corners" (what export uses), see module docstring
        self.method = "auto"
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
        exporting = torch.compiler.is_exporting()
        if not exporting and sum(h * w for h, w in shapes) != s:
            raise ValueError(f"spatial shapes {shapes} do not add up to {s} value tokens")
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value)
        if exporting and key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        # in place (the projection's output is not needed for backward); on the CPU only when some
        # position is padding (a single unpadded image has none; on a GPU the test would synchronize)
        elif key_padding_mask is not None and (value.device.type != "cpu" or bool(key_padding_mask.any())):
            value = value.masked_fill_(key_padding_mask[..., None], 0.0)
        value = value.view(b, s, heads, self.d_model // heads)
        if reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {tuple(reference_points.shape)}")
        value_dtype = compute_dtype = value.dtype
        low_on_cpu = value.device.type == "cpu" and value.dtype in (torch.float16, torch.bfloat16)
        if low_on_cpu:
            compute_dtype = torch.float32
        offsets = self.sampling_offsets(query).view(b, q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(b, q, heads, levels * points)
        # low precision on the CPU: the softmax reads the projection once, straight into float32
        weights = weights.softmax(-1, dtype=torch.float32) if low_on_cpu else weights.softmax(-1)
        weights = weights.view(b, q, heads, levels, points).to(compute_dtype)
        ref = reference_points.to(compute_dtype)[:, :, None, :, None, :]  # [B, Q, 1, levels, 1, 2 or 4]
        offsets = offsets.to(compute_dtype)
        method = "corners" if exporting else _resolve(self.method, value, offsets, weights)
        if method != "gather":  # the gather reads a low-precision table directly; the others sample in float32
            value = value.to(compute_dtype)
        if method == "corners":  # tensors only, ONNX-exportable: no embedding_bag, no grid_sample
            size = level_sizes(shapes, offsets)[:, None]  # [levels, 1, 2]
            if ref.shape[-1] == 4:
                offsets = offsets * (ref[..., 2:] * size * (0.5 / points))
            out = _gather_corners(value, shapes, offsets + (ref[..., :2] * size - 0.5), weights)
        elif method == "gather" and not _recording(value, offsets, weights, ref):
            # straight to pixel coordinates, the official normalized locations times the level size
            # minus 0.5, in place on the fresh offsets: one pass over the largest tensor here
            # (the per-query terms are expanded over the points first: a broadcast over the heads
            # with contiguous inner runs is ~10x faster than one with runs of 2)
            size = level_sizes(shapes, offsets)[:, None]  # [levels, 1, 2]
            full = (b, q, 1, levels, points, 2)
            shift = (ref[..., :2] * size - 0.5).expand(full).contiguous()
            if ref.shape[-1] == 4:
                offsets = offsets.mul_((ref[..., 2:] * size * (0.5 / points)).expand(full).contiguous())
            out = gather_sample(value, shapes, offsets.add_(shift), weights)
        else:  # training: the official normalized locations (gather: with grid_sample's arithmetic)
            size = level_sizes(shapes, offsets)[:, None].expand(levels, points, 2).contiguous()
            if method == "gather":
                out = gather_sample(value, shapes, training_pixels(offsets, ref, size, points), weights)
            else:
                locations = training_locations(offsets, ref, size, points)
                out = multi_scale_deformable_sample(value, shapes, locations, weights, "grid_sample")
        return self.output_proj(out.to(value_dtype))


def _as_shape_list(spatial_shapes: Tensor | list[tuple[int, int]]) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]  # no int(): symbolic sizes under torch.export stay symbolic
