"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch: no compiled extension.

``multi_scale_deformable_sample`` is the pure sampling function (bilinear, zero padding, the
pixel-centre convention of the original CUDA kernel). Two implementations compute it:
``"gather"`` folds the attention weights into the four bilinear corner weights and does one
weighted gather-sum over all levels with ``embedding_bag``, about 3x faster than ``"grid_sample"``
(the official PyTorch fallback: one ``grid_sample`` per level, then stack, multiply and sum) in a
forward pass. Their backward passes rank the other way: ``embedding_bag``'s backward sorts every
index, so forward plus backward takes about twice as long as ``grid_sample``'s (measured on the
smoke-training shapes, 2 CPU threads: 88 ms vs 39 ms per call). ``"auto"`` (the default) therefore
gathers when no gradient is recorded (inference) and uses ``grid_sample`` when one is (training).
Under ``torch.export`` (the ONNX export) the module samples with ``"corners"``: four plain row
gathers and weighted sums, with symbolic level sizes and no ``embedding_bag`` or ``GridSample``.
``MultiScaleDeformableAttention`` is the module with the official parameter names
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``).

Low precision: on the CPU, fp16/bf16 sampling locations and attention weights are computed in
float32 (a bf16 pixel coordinate is off by up to half a pixel on a 167-pixel-wide level); the
gather then reads the value table in its own dtype (half the bytes of float32; ``embedding_bag``
accumulates in float32), while ``grid_sample`` and ``corners`` sample a float32 copy (half-precision
``grid_sample`` is slow or unsupported there) and cast back. On CUDA they are sampled natively. Under
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
        size = _level_sizes(spatial_shapes, sampling_locations)
        pixels = sampling_locations * size[:, None] - 0.5  # grid_sample's align_corners=False convention
        return _gather_pixels(value, spatial_shapes, pixels, attention_weights)
    if method == "corners":
        pixels = sampling_locations * _level_sizes(spatial_shapes, sampling_locations)[:, None] - 0.5
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


def _resolve(method: str, *tensors: Tensor) -> str:
    """``"auto"`` -> ``"grid_sample"`` when a gradient is recorded, else ``"gather"`` (module docstring)."""
    if method == "auto":
        recording = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        return "grid_sample" if recording else "gather"
    if method not in ("gather", "grid_sample", "corners"):
        raise ValueError(f"unknown deformable sampling method {method!r} (auto, gather, grid_sample, corners)")
    return method


def _level_sizes(shapes: list[tuple[int, int]], like: Tensor) -> Tensor:
    """``[levels, 2]`` (w, h) of every level, in ``like``'s dtype and device.

    Small constants are built on the host and copied with ``non_blocking``: a blocking host-to-GPU
    copy would make the host wait for every kernel queued before it (one stall per layer)."""
    return _on(torch.tensor([[w, h] for h, w in shapes], dtype=like.dtype), like.device)


def _on(host: Tensor, device: torch.device) -> Tensor:
    """``host`` on ``device`` without waiting for the device (see :func:`_level_sizes`)."""
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


_PAD = 2  # zero border around every level: all four corners of any clamped location are in range
#: Bags (batch x query x head) per chunk of the gather on the CPU: its index and weight tensors
#: (bags x 64 x 4 bytes each) stay in cache and are recycled by the allocator instead of
#: page-faulted afresh. Other devices gather in one pass.
_CHUNK_BAGS = 16384


def _gather_pixels(value: Tensor, shapes: list[tuple[int, int]], pixels: Tensor, weights: Tensor) -> Tensor:
    """Bilinear corners as rows of a zero-bordered value table, summed by ``embedding_bag``.

    ``pixels``: ``[B, Q, heads, levels, points, 2]`` (x, y) in pixels of each level, pixel centres
    at ``i + 0.5 - 0.5 = i``; it is overwritten (clamped, then turned into the bilinear fractions)
    when no gradient is recorded. The table keeps the value's own layout, rows ``(batch, padded
    position, head)``, and the bags are ``(batch, query, head)``: neither the inputs nor the output
    need a permuting copy, and the table is filled with one strided copy per level. Pixels are
    clamped to [-1.5, size + 0.5]: every point the kernel would skip (all corners outside) then
    reads only border zeros, so no per-corner validity test is needed.
    """
    b, _, heads, c = value.shape
    _, q, _, levels, points, _ = pixels.shape
    device = value.device
    lp = levels * points
    padded = [(h + 2 * _PAD) * (w + 2 * _PAD) for h, w in shapes]
    starts = [sum(padded[:lvl]) for lvl in range(levels)]
    total = sum(padded)
    table = value.new_empty(b, total, heads, c)
    for lvl, part in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[lvl]
        level = table[:, starts[lvl] : starts[lvl] + padded[lvl]].view(b, h + 2 * _PAD, w + 2 * _PAD, heads, c)
        level[:, :_PAD] = 0  # only the border is zeroed: the interior is overwritten next
        level[:, _PAD + h :] = 0
        level[:, _PAD : _PAD + h, :_PAD] = 0
        level[:, _PAD : _PAD + h, _PAD + w :] = 0
        level[:, _PAD : _PAD + h, _PAD : _PAD + w] = part.view(b, h, w, heads, c)
    table = table.view(b * total * heads, c)

    # per (level, point) constants, as vectors over a bag's level * point samples
    level = torch.arange(levels, device=device).repeat_interleave(points)
    size = _level_sizes(shapes, pixels)[level]  # [lp, 2]
    width = _on(torch.tensor([w + 2 * _PAD for _, w in shapes], dtype=torch.int32), device)[level]
    first = _on(torch.tensor(starts, dtype=torch.int32), device)[level]
    # table row of a bag's top-left corners, less the position term: (batch * total + start) * heads + head
    const = (torch.arange(b, device=device, dtype=torch.int32) * total).view(b, 1, 1) + first
    const = (const * heads + torch.arange(heads, device=device, dtype=torch.int32).view(1, heads, 1))[:, None]
    # from the top-left corner to the four corners, the outer axis of each bag's index: [4, lp]
    steps = torch.stack([torch.zeros_like(width), torch.full_like(width, heads), width * heads, (width + 1) * heads])
    low, high = torch.full_like(size, -1.5), size + 0.5
    inplace = not (torch.is_grad_enabled() and (pixels.requires_grad or weights.requires_grad))

    out = value.new_empty(b, q, heads * c)
    # chunks keep the CPU's caches warm; on a GPU one pass is fastest (each chunk is a dozen launches)
    chunk = max(1, _CHUNK_BAGS // (b * heads)) if device.type == "cpu" else q
    for q0 in range(0, q, chunk):
        q1 = min(q, q0 + chunk)
        nq = b * (q1 - q0) * heads
        xy = pixels[:, q0:q1].reshape(nq, lp, 2)
        xy = xy.nan_to_num_(nan=-1.5) if inplace else xy.nan_to_num(nan=-1.5)
        xy = xy.clamp_(min=low, max=high) if inplace else xy.clamp(min=low, max=high)
        # shifted by the border every coordinate is > 0, so truncation is floor
        xy = xy.add_(_PAD) if inplace else xy + _PAD
        corner = xy.to(torch.int32)
        frac = xy.sub_(corner) if inplace else xy - corner
        # every elementwise result below is written contiguously (strided outputs are several
        # times slower on the CPU): the top-left rows, then one broadcast add to the four corners
        top_left = corner[..., 1] * (width * heads)
        top_left.add_(corner[..., 0], alpha=heads)
        top_left = top_left.view(b, -1, heads, lp).add_(const).view(nq, 1, lp)
        index = top_left + steps  # [bags, 4, lp]
        fx, fy = frac.unbind(-1)
        wq = weights[:, q0:q1].reshape(nq, lp)
        bottom = fy * wq
        rows = torch.stack([wq - bottom, bottom], 1)  # [bags, 2 (top, bottom), lp]
        cols = torch.stack([1 - fx, fx], 1)  # [bags, 2 (left, right), lp]
        # the four products in the corners' order, cast to the table's dtype as they are written
        if inplace:
            weight = torch.empty(nq, 2, 2, lp, device=device, dtype=table.dtype)
            torch.mul(rows[:, :, None], cols[:, None], out=weight)
        else:  # out= does not record gradients
            weight = (rows[:, :, None] * cols[:, None]).to(table.dtype)
        sampled = F.embedding_bag(index.view(nq, 4 * lp), table, per_sample_weights=weight.view(nq, 4 * lp), mode="sum")
        if q0 == 0 and q1 == q:
            return sampled.view(b, q, heads * c)
        out[:, q0:q1] = sampled.view(b, q1 - q0, heads * c)
    return out


def _gather_corners(value: Tensor, shapes: list[tuple[int, int]], pixels: Tensor, weights: Tensor) -> Tensor:
    """The bilinear sampling as plain tensor operations, for export (ONNX ``Gather`` + ``ReduceSum``).

    Same inputs and result as :func:`_gather_pixels` (``pixels`` are not modified): for each of the
    four corners, one row gather from the ``[B*S*heads, C]`` value table (rows clamped into their
    level) weighted by attention x bilinear weight x in-range, summed over the level x point samples.
    Level sizes may be symbolic: nothing loops over a data-dependent count.
    """
    b, s, heads, c = value.shape
    _, q, _, levels, points, _ = pixels.shape
    device = value.device
    lp = levels * points
    level = torch.arange(levels, device=device).repeat_interleave(points)
    size = _level_sizes(shapes, pixels)[level]  # [lp, 2] (w, h) as floats
    starts = [0]
    for h, wd in shapes[:-1]:
        starts.append(starts[-1] + h * wd)
    first = _on(torch.tensor(starts, dtype=torch.long), device)[level]  # [lp]
    width = _on(torch.tensor([w for _, w in shapes], dtype=torch.long), device)[level]
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
            size = _level_sizes(shapes, offsets)[:, None]  # [levels, 1, 2]
            if ref.shape[-1] == 4:
                offsets = offsets * (ref[..., 2:] * size * (0.5 / points))
            out = _gather_corners(value, shapes, offsets + (ref[..., :2] * size - 0.5), weights)
        elif method == "gather":
            # straight to pixel coordinates, the official normalized locations times the level size
            # minus 0.5, in place on the fresh offsets: one pass over the largest tensor here
            # (the per-query terms are expanded over the points first: a broadcast over the heads
            # with contiguous inner runs is ~10x faster than one with runs of 2)
            size = _level_sizes(shapes, offsets)[:, None]  # [levels, 1, 2]
            full = (b, q, 1, levels, points, 2)
            shift = (ref[..., :2] * size - 0.5).expand(full).contiguous()
            inplace = not (torch.is_grad_enabled() and offsets.requires_grad)
            if ref.shape[-1] == 4:
                scale = (ref[..., 2:] * size * (0.5 / points)).expand(full).contiguous()
                offsets = offsets.mul_(scale) if inplace else offsets * scale
            pixels = offsets.add_(shift) if inplace else offsets + shift
            out = _gather_pixels(value, shapes, pixels, weights)
        else:
            if ref.shape[-1] == 2:
                locations = ref + offsets / _level_sizes(shapes, offsets)[:, None]
            else:
                locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5
            out = multi_scale_deformable_sample(value, shapes, locations, weights, "grid_sample")
        return self.output_proj(out.to(value_dtype))


def _as_shape_list(spatial_shapes: Tensor | list[tuple[int, int]]) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]  # no int(): symbolic sizes under torch.export stay symbolic
