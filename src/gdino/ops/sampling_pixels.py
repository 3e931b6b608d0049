"""Where the deformable attention samples, in training: normalized locations and pixel coordinates.

The official locations are ``ref + offsets / size`` (2-coordinate references: the encoder) or
``ref[..., :2] + offsets / points * ref[..., 2:] * 0.5`` (boxes: the decoder); the gather samples at
pixel coordinates computed with ``grid_sample``'s own arithmetic, ``(2 * loc - 1 + 1) * size / 2 -
0.5`` (see ``gdino.ops.deformable``). Written out, autograd runs seven element-wise operations over
the ``[B, Q, heads, levels, points, 2]`` offsets, each into a new tensor, and three more backward:
20 ms forward and 26 ms with the backward per Swin-T encoder layer at 512 px (batch 2, one CPU
thread), for a 2.8 MB tensor. :class:`TrainingPixels` runs the same operations in the same order in
one buffer, forward and backward, so its values are the written-out expression's bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def training_locations(offsets: Tensor, ref: Tensor, size: Tensor, points: int) -> Tensor:
    """The official normalized sampling locations, ``[B, Q, heads, levels, points, 2]``.

    ``offsets``: ``[B, Q, heads, levels, points, 2]``; ``ref``: ``[B, Q, 1, levels, 1, 2 or 4]``;
    ``size``: ``[levels, points, 2]`` (w, h) as floats. Every broadcast operand is expanded over the
    points first: a broadcast with contiguous inner runs of levels x points x 2 is several times
    faster than one with runs of 2, and the values are the same bit for bit.
    """
    full = (*offsets.shape[:2], 1, *offsets.shape[3:])
    if ref.shape[-1] == 2:
        return ref.expand(full).contiguous() + offsets / size
    scale = ref[..., 2:].expand(full).contiguous()
    return ref[..., :2].expand(full).contiguous() + offsets / points * scale * 0.5


def training_pixels(offsets: Tensor, ref: Tensor, size: Tensor, points: int) -> Tensor:
    """Pixel coordinates of :func:`training_locations` in ``grid_sample``'s arithmetic; through
    :class:`TrainingPixels` unless the references need a gradient (the decoder's never do: each
    layer's reference boxes are detached)."""
    if torch.is_grad_enabled() and ref.requires_grad:
        return (2 * training_locations(offsets, ref, size, points) - 1 + 1) * (size / 2) - 0.5
    return TrainingPixels.apply(offsets, ref.detach(), size, points)


class TrainingPixels(torch.autograd.Function):
    """:func:`training_pixels` for references without gradient, in one buffer each way."""

    @staticmethod
    def forward(ctx: Any, offsets: Tensor, ref: Tensor, size: Tensor, points: int) -> Tensor:
        full = (*offsets.shape[:2], 1, *offsets.shape[3:])
        if ref.shape[-1] == 2:
            pixels = offsets / size
        else:
            scale = ref[..., 2:].expand(full).contiguous()
            pixels = (offsets / points).mul_(scale).mul_(0.5)
            ctx.save_for_backward(scale)
        pixels.add_(ref[..., :2].expand(full).contiguous())  # float addition commutes: ref + t
        half = size / 2
        pixels.mul_(2).sub_(1).add_(1).mul_(half).sub_(0.5)
        ctx.size, ctx.half, ctx.points, ctx.boxes = size, half, points, ref.shape[-1] == 4
        return pixels

    @staticmethod
    @once_differentiable  # no double backward: a clear error instead of a wrong graph
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        # autograd's chain for the expression: * half, * 2, then / size (or * 0.5, * scale, / points)
        out = grad * ctx.half
        out.mul_(2)
        if ctx.boxes:
            (scale,) = ctx.saved_tensors
            out.mul_(0.5).mul_(scale).div_(ctx.points)
        else:
            out.div_(ctx.size)
        return out, None, None, None
