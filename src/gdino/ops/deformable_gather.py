"""The gather path of multi-scale deformable sampling, with a hand-written backward.

Forward: the four bilinear corners of every sample are rows of a zero-bordered value table, and
one ``embedding_bag`` per chunk of (batch, query, head) bags sums them, the attention weight folded
into the corner weights (:func:`gather_pixels`). When a gradient is recorded the same forward runs
inside :class:`GatherSample`, which keeps the table, the int32 table row of each sample's top-left
corner, its bilinear fractions and its four corner weights (no copy of the gathered rows), and
computes the backward itself (``embedding_bag``'s own backward sorts every index, which made the
gather slower than ``grid_sample`` in training):

- value: ``d value[row] += corner weight * d out[bag]`` for the four corners of every sample,
  computed as the transposed gather: per batch item the samples are sorted by their top-left
  table row, and one ``embedding_bag`` per corner sums the bags' gradients into the rows (a row's
  bag: the samples whose top-left corner it is); each level's four corner planes are then added
  with their one-pixel shifts. (A ``scatter_add_`` of the ``[samples, 4, C]`` products did the
  same in 1.5x the time: the sort is a fraction of the products it saves);
- attention weights and pixel coordinates: ``D = dot(table row, d out[bag])`` for every corner
  (``embedding_bag``'s per-sample-weight backward kernel), then the bilinear derivatives:
  ``d a = sum(bilinear * D)``, ``d x = a * ((1 - fy)(D_tr - D_tl) + fy (D_br - D_bl))`` and
  likewise for y.

Zero padding needs no mask: pixels are clamped to [-1.5, size + 0.5], where every corner read is a
zero border row, so a clamped (or NaN) coordinate gets the zero gradient of ``grid_sample``'s zero
padding, as does a point whose corners are all outside the map.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

_PAD = 2  # zero border around every level: all four corners of any clamped location are in range
#: Bags (batch x query x head) per chunk of the gather on the CPU: its index and weight tensors
#: (bags x 64 x 4 bytes each) stay in cache and are recycled by the allocator instead of
#: page-faulted afresh. Other devices gather in one pass.
_CHUNK_BAGS = 16384
#: Elements per chunk of the backward's per-corner dot products on the CPU (bags x samples x 4
#: corners x C; 4096 bags of 64 corners x 32 channels: flat from 2048 bags up, slower below).
_BACKWARD_FLOATS = 1 << 23
_LOW = (torch.float16, torch.bfloat16)


def level_sizes(shapes: list[tuple[int, int]], like: Tensor) -> Tensor:
    """``[levels, 2]`` (w, h) of every level, in ``like``'s dtype and device.

    Small constants are built on the host and copied with ``non_blocking``: a blocking host-to-GPU
    copy would make the host wait for every kernel queued before it (one stall per layer)."""
    return on_device(torch.tensor([[w, h] for h, w in shapes], dtype=like.dtype), like.device)


def on_device(host: Tensor, device: torch.device) -> Tensor:
    """``host`` on ``device`` without waiting for the device (see :func:`level_sizes`)."""
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


def gather_sample(value: Tensor, shapes: list[tuple[int, int]], pixels: Tensor, weights: Tensor) -> Tensor:
    """:func:`gather_pixels`, differentiable when a gradient is recorded (then through
    :class:`GatherSample`, in float32 for half-precision values; ``pixels`` is not modified)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (value, pixels, weights)):
        dtype = value.dtype
        table_dtype = torch.float32 if dtype in _LOW else dtype
        out = GatherSample.apply(value.to(table_dtype), pixels, weights.to(table_dtype), shapes)
        return out.to(dtype)
    return gather_pixels(value, shapes, pixels, weights)


def _table(value: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, list[int], int]:
    """The value as ``[B * padded positions * heads, C]`` rows, every level framed by ``_PAD`` zeros;
    also each level's first padded position and the padded total."""
    b, _, heads, c = value.shape
    padded = [(h + 2 * _PAD) * (w + 2 * _PAD) for h, w in shapes]
    starts = [sum(padded[:lvl]) for lvl in range(len(shapes))]
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
    return table.view(b * total * heads, c), starts, total


def _corner_steps(shapes: list[tuple[int, int]], points: int, heads: int, device: torch.device) -> Tensor:
    """``[4, levels * points]`` int32 row offsets from a sample's top-left corner to its four
    corners (top-left, top-right, bottom-left, bottom-right)."""
    level = torch.arange(len(shapes), device=device).repeat_interleave(points)
    width = on_device(torch.tensor([w + 2 * _PAD for _, w in shapes], dtype=torch.int32), device)[level]
    return torch.stack([torch.zeros_like(width), torch.full_like(width, heads), width * heads, (width + 1) * heads])


def gather_pixels(value: Tensor, shapes: list[tuple[int, int]], pixels: Tensor, weights: Tensor) -> Tensor:
    """Bilinear corners as rows of a zero-bordered value table, summed by ``embedding_bag``; no
    gradient is recorded (:func:`gather_sample` differentiates).

    ``pixels``: ``[B, Q, heads, levels, points, 2]`` (x, y) in pixels of each level, pixel centres
    at ``i + 0.5 - 0.5 = i``; it is overwritten (clamped, then turned into the bilinear fractions).
    The table keeps the value's own layout, rows ``(batch, padded position, head)``, and the bags
    are ``(batch, query, head)``: neither the inputs nor the output need a permuting copy, and the
    table is filled with one strided copy per level. Pixels are clamped to [-1.5, size + 0.5]:
    every point the kernel would skip (all corners outside) then reads only border zeros, so no
    per-corner validity test is needed.
    """
    table, starts, total = _table(value, shapes)
    return _gather(table, starts, total, value.shape, shapes, pixels, weights)


def _gather(
    table: Tensor,
    starts: list[int],
    total: int,
    value_shape: torch.Size,
    shapes: list[tuple[int, int]],
    pixels: Tensor,
    weights: Tensor,
    saved: _Saved | None = None,
) -> Tensor:
    """:func:`gather_pixels` from a built table; with ``saved``, every sample's top-left row,
    fractions and corner weights are kept there, and ``pixels`` is not modified."""
    b, _, heads, c = value_shape
    _, q, _, levels, points, _ = pixels.shape
    device = table.device
    lp = levels * points

    # per (level, point) constants, as vectors over a bag's level * point samples
    level = torch.arange(levels, device=device).repeat_interleave(points)
    size = level_sizes(shapes, pixels)[level]  # [lp, 2]
    width = on_device(torch.tensor([w + 2 * _PAD for _, w in shapes], dtype=torch.int32), device)[level]
    # each level's first row, moved to its unpadded pixel (0, 0): _PAD rows and _PAD columns in
    first = on_device(torch.tensor(starts, dtype=torch.int32), device)[level] + _PAD * (width + 1)
    # table row of a bag's top-left corners, less the position term: (batch * total + start) * heads + head
    const = (torch.arange(b, device=device, dtype=torch.int32) * total).view(b, 1, 1) + first
    const = (const * heads + torch.arange(heads, device=device, dtype=torch.int32).view(1, heads, 1))[:, None]
    steps = _corner_steps(shapes, points, heads, device)  # the outer axis of each bag's index: [4, lp]
    low, high = torch.full_like(size, -1.5), size + 0.5
    inplace = saved is None
    keep = None if saved is None else (saved.rows.view(b, q, heads, lp), saved.frac.view(b, q, heads, 2, lp))

    out = table.new_empty(b, q, heads * c)
    # chunks keep the CPU's caches warm; on a GPU one pass is fastest (each chunk is a dozen launches)
    chunk = max(1, _CHUNK_BAGS // (b * heads)) if device.type == "cpu" else q
    for q0 in range(0, q, chunk):
        q1 = min(q, q0 + chunk)
        nq = b * (q1 - q0) * heads
        xy = pixels[:, q0:q1].reshape(nq, lp, 2)
        xy = xy.nan_to_num_(nan=-1.5) if inplace else xy.nan_to_num(nan=-1.5)
        # (a copy from here on when the pixels are kept); the floor of the unshifted coordinate:
        # x + _PAD can round across an integer (in float32 5 - 2**-22 + 2 rounds to 7), which
        # moves the sample to the neighbouring cell, whose one-sided derivative differs
        xy = xy.clamp_(min=low, max=high)
        floor = xy.floor()
        frac = xy.sub_(floor)
        corner = floor.to(torch.int32)
        # every elementwise result below is written contiguously (strided outputs are several
        # times slower on the CPU): the top-left rows, then one broadcast add to the four corners
        top_left = corner[..., 1] * (width * heads)
        top_left.add_(corner[..., 0], alpha=heads)
        top_left = top_left.view(b, -1, heads, lp).add_(const).view(nq, 1, lp)
        if keep is not None:
            keep[0][:, q0:q1] = top_left.view(b, -1, heads, lp)
            keep[1][:, q0:q1] = frac.view(b, -1, heads, lp, 2).transpose(-1, -2)
        index = top_left + steps  # [bags, 4, lp]
        fx, fy = frac.unbind(-1)
        wq = weights[:, q0:q1].reshape(nq, lp)
        bottom = fy * wq
        rows = torch.stack([wq - bottom, bottom], 1)  # [bags, 2 (top, bottom), lp]
        cols = torch.stack([1 - fx, fx], 1)  # [bags, 2 (left, right), lp]
        # the four products in the corners' order, cast to the table's dtype as they are written
        weight = torch.empty(nq, 2, 2, lp, device=device, dtype=table.dtype)
        torch.mul(rows[:, :, None], cols[:, None], out=weight)
        if saved is not None:
            # corner-major, as the backward reads them: [4, bags, samples]
            corner_major = weight.view(b, -1, heads, 4, lp).permute(3, 0, 1, 2, 4)
            saved.corners.view(4, b, q, heads, lp)[:, :, q0:q1] = corner_major
        sampled = F.embedding_bag(index.view(nq, 4 * lp), table, per_sample_weights=weight.view(nq, 4 * lp), mode="sum")
        if q0 == 0 and q1 == q:
            return sampled.view(b, q, heads * c)
        out[:, q0:q1] = sampled.view(b, q1 - q0, heads * c)
    return out


class _Saved(NamedTuple):
    """What the backward keeps per (batch, query, head) bag: the top-left table row of every
    sample (int32 ``[bags, samples]``), its bilinear fractions (``[bags, 2 (x, y), samples]``) and
    its four corner weights, attention included (corner-major, ``[4, bags, samples]``, corners in
    the index's order)."""

    rows: Tensor
    frac: Tensor
    corners: Tensor


class GatherSample(torch.autograd.Function):
    """``gather_pixels`` with the hand-written backward of the module docstring.

    Inputs: value ``[B, S, heads, C]``, pixels ``[B, Q, heads, levels, points, 2]``, attention
    weights ``[B, Q, heads, levels, points]`` (the value's dtype), the level shapes."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, pixels: Tensor, weights: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        b, q, heads, levels, points, _ = pixels.shape
        bags, lp = b * q * heads, levels * points
        saved = _Saved(
            value.new_empty(bags, lp, dtype=torch.int32),
            pixels.new_empty(bags, 2, lp),
            value.new_empty(4, bags, lp),
        )
        table, starts, total = _table(value, shapes)
        out = _gather(table, starts, total, value.shape, shapes, pixels, weights, saved=saved)
        ctx.save_for_backward(table, weights, *saved)
        ctx.shapes = shapes
        ctx.value_shape = value.shape
        return out

    @staticmethod
    @once_differentiable  # no double backward: a clear error instead of a wrong graph
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        table, weights, rows, frac, corners = ctx.saved_tensors
        shapes: list[tuple[int, int]] = ctx.shapes
        b, s, heads, c = ctx.value_shape
        need_value, need_pixels, need_weights = ctx.needs_input_grad[:3]
        bags, lp = rows.shape
        points = lp // len(shapes)
        device = table.device
        g = grad_out.reshape(bags, c).to(table.dtype)
        attn = weights.reshape(bags, lp)
        steps = _corner_steps(shapes, points, heads, device)
        grad_frac = frac.new_empty(bags, lp, 2) if need_pixels else None
        grad_attn = attn.new_empty(bags, lp) if need_weights else None
        chunk = max(1, _BACKWARD_FLOATS // (4 * lp * c)) if device.type == "cpu" else bags
        offsets = torch.arange(0, chunk * 4 * lp, 4 * lp, dtype=torch.int32, device=device)
        bag_of = torch.arange(chunk, dtype=torch.int32, device=device).repeat_interleave(4 * lp)
        grad_value = _value_gradient(g, rows, corners, shapes, b, s, heads, c) if need_value else None
        if grad_frac is not None or grad_attn is not None:
            for n0 in range(0, bags, chunk):
                n1 = min(bags, n0 + chunk)
                n = n1 - n0
                gn = g[n0:n1]
                index = (rows[n0:n1].view(n, 1, lp) + steps).view(-1)  # [n, 4, lp]
                dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                    gn, table, index, offsets[:n], bag_of[: n * 4 * lp], 0, -1
                )
                top_left, top_right, bottom_left, bottom_right = dots.view(n, 4, lp).to(frac.dtype).unbind(1)
                fx, fy = frac[n0:n1].unbind(1)
                top = torch.lerp(top_left, top_right, fx)  # interpolated along x, per row
                bottom = torch.lerp(bottom_left, bottom_right, fx)
                if grad_attn is not None:
                    torch.lerp(top, bottom, fy, out=grad_attn[n0:n1])
                if grad_frac is not None:
                    a = attn[n0:n1]
                    left = torch.lerp(top_left, bottom_left, fy)
                    right = torch.lerp(top_right, bottom_right, fy)
                    torch.mul(right.sub_(left), a, out=grad_frac[n0:n1, :, 0])
                    torch.mul(bottom.sub_(top), a, out=grad_frac[n0:n1, :, 1])
        grad_pixels = grad_frac.view(b, -1, heads, len(shapes), points, 2) if grad_frac is not None else None
        grad_weights = grad_attn.view(weights.shape) if grad_attn is not None else None
        return grad_value, grad_pixels, grad_weights, None


def _value_gradient(
    g: Tensor, rows: Tensor, corners: Tensor, shapes: list[tuple[int, int]], b: int, s: int, heads: int, c: int
) -> Tensor:
    """``d value`` as the transposed gather: the samples of each batch item sorted by their
    top-left table row, then one ``embedding_bag`` per corner over the bags' gradients (a table
    row's bag: the samples whose top-left corner it is, weighted by that corner's weight), and each
    level's four corner planes added with their one-pixel shifts (:func:`_fold_corners`).

    The stable sort keeps every row's samples in sample order, the order ``scatter_add_`` would add
    them in; the products and sums are ``embedding_bag``'s, fast sequential reads of the gradient
    rows instead of a scatter of ``[samples, 4, C]`` products."""
    bags, lp = rows.shape
    padded = sum((h + 2 * _PAD) * (w + 2 * _PAD) for h, w in shapes)
    item_rows, item_bags = padded * heads, bags // b
    grad = g.new_empty(b, s, heads, c)
    for item in range(b):
        first = item * item_bags
        keys = rows[first : first + item_bags].reshape(-1) - item * item_rows  # int32, this item's rows
        keys, order = torch.sort(keys, stable=True)
        # each row's first sorted sample (a binary search per row: no count, no device sync)
        starts = torch.searchsorted(keys, torch.arange(item_rows, dtype=keys.dtype, device=keys.device))
        bag = order // lp
        # corner weights of the sorted samples, [4, samples] (corners is [4, bags, lp])
        weights = corners[:, first : first + item_bags].reshape(4, -1).index_select(1, order)
        table = g[first : first + item_bags]
        planes = [F.embedding_bag(bag, table, starts, mode="sum", per_sample_weights=w) for w in weights]
        _fold_corners(planes, shapes, grad[item], heads, c)
    return grad


def _fold_corners(planes: list[Tensor], shapes: list[tuple[int, int]], grad: Tensor, heads: int, c: int) -> None:
    """One batch item's value gradient ``grad`` (``[S, heads, C]``, written) from its four corner
    planes (``[table rows, C]`` each, indexed by top-left rows): a pixel gets its top-left plane,
    the top-right plane of its left neighbour, the bottom-left plane of the pixel above and the
    bottom-right plane of the pixel above-left."""
    padded = [(h + 2 * _PAD) * (w + 2 * _PAD) for h, w in shapes]
    views = [plane.view(sum(padded), heads, c) for plane in planes]
    start = 0
    for (h, w), (part, p) in zip(shapes, zip(grad.split([h * w for h, w in shapes], dim=0), padded)):
        tl, tr, bl, br = (v[start : start + p].view(h + 2 * _PAD, w + 2 * _PAD, heads, c) for v in views)
        y, x = slice(_PAD, _PAD + h), slice(_PAD, _PAD + w)
        above, left = slice(_PAD - 1, _PAD - 1 + h), slice(_PAD - 1, _PAD - 1 + w)
        out = part.view(h, w, heads, c)
        torch.add(tl[y, x], tr[y, left], out=out)
        out.add_(bl[above, x]).add_(br[above, left])
        start += p
