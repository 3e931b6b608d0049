"""``training_pixels`` (one buffer each way) against the written-out expression through autograd."""

from __future__ import annotations

import pytest
import torch

from gdino.ops.sampling_pixels import TrainingPixels, training_locations, training_pixels

SHAPES = torch.tensor([[64.0, 48.0], [32.0, 24.0], [16.0, 12.0], [8.0, 6.0]])


def _inputs(ref_dim: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, q, heads, levels, points = 2, 37, 8, 4, 4
    offsets = (3 * torch.randn(b, q, heads, levels, points, 2, generator=gen, dtype=dtype)).requires_grad_()
    ref = torch.rand(b, q, 1, levels, 1, ref_dim, generator=gen, dtype=dtype)
    size = SHAPES.to(dtype)[:, None].expand(levels, points, 2).contiguous()
    grad = torch.randn(offsets.shape, generator=gen, dtype=dtype)
    return offsets, ref, size, points, grad


def _written_out(offsets, ref, size, points):
    return (2 * training_locations(offsets, ref, size, points) - 1 + 1) * (size / 2) - 0.5


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_equals_the_written_out_expression_bit_for_bit(ref_dim):
    offsets, ref, size, points, grad = _inputs(ref_dim)
    pixels = training_pixels(offsets, ref, size, points)
    assert type(pixels.grad_fn).__name__ == "TrainingPixelsBackward"
    (got,) = torch.autograd.grad(pixels, offsets, grad)
    want_pixels = _written_out(offsets, ref, size, points)
    (want,) = torch.autograd.grad(want_pixels, offsets, grad)
    assert torch.equal(pixels, want_pixels) and torch.equal(got, want)
    # and the official formula in float64: the locations times the level size, minus half a pixel
    loc = training_locations(offsets.double(), ref.double(), size.double(), points)
    torch.testing.assert_close(pixels.double(), loc * size.double() - 0.5, atol=1e-4, rtol=0)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_gradcheck(ref_dim):
    offsets, ref, size, points, _ = _inputs(ref_dim, torch.float64, seed=1)
    offsets = offsets[:, :3].detach().requires_grad_()
    ref = ref[:, :3]
    assert torch.autograd.gradcheck(lambda o: TrainingPixels.apply(o, ref, size, points), (offsets,))


def test_references_with_a_gradient_take_the_written_out_expression():
    offsets, ref, size, points, grad = _inputs(4, seed=2)
    ref.requires_grad_()
    pixels = training_pixels(offsets, ref, size, points)
    assert type(pixels.grad_fn).__name__ != "TrainingPixelsBackward"
    got = torch.autograd.grad(pixels, (offsets, ref), grad)
    want = torch.autograd.grad(_written_out(offsets, ref, size, points), (offsets, ref), grad)
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and got[1].abs().sum() > 0
