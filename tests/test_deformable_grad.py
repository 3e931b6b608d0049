"""The gather path's hand-written backward (``GatherSample``) against ``grid_sample``'s autograd.

``grid_sample`` (bilinear, zero padding, ``align_corners=False``) is the independent reference: the
official PyTorch fallback of multi-scale deformable attention, differentiated by PyTorch. In float64
the two backward passes compute the same sums in another order, so they agree to ~1e-14; the
tolerance below is 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_

from gdino.ops import deformable_gather
from gdino.ops.deformable import MultiScaleDeformableAttention, _resolve, multi_scale_deformable_sample

SHAPES = [(6, 9), (3, 5), (2, 3), (1, 2)]
#: power-of-two sizes: (i + 0.5) / size is exact in binary, so a location can sit exactly on a
#: pixel centre (an integer pixel coordinate, where bilinear sampling has a kink) in both paths
POW2 = [(4, 8), (2, 4), (1, 2), (1, 1)]
TOL = 1e-10


def _inputs(shapes, seed=0, b=2, q=7, heads=2, c=3, points=3, spread=1.4):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, heads, c, generator=g, dtype=torch.float64)
    # locations from -0.2 to 1.2 of each level: some points partly or wholly outside the map
    loc = torch.rand(b, q, heads, len(shapes), points, 2, generator=g, dtype=torch.float64) * spread - (spread - 1) / 2
    w = torch.rand(b, q, heads, len(shapes), points, generator=g, dtype=torch.float64)
    return value, loc, w


def _grads(method, shapes, value, loc, w, grad=None):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, w)]
    out = multi_scale_deformable_sample(*leaves[:1], shapes, *leaves[1:], method=method)
    out.backward(torch.ones_like(out) if grad is None else grad)
    return out.detach(), [t.grad for t in leaves]


def _assert_same_grads(shapes, value, loc, w, tol=TOL):
    grad = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], dtype=value.dtype)
    out, got = _grads("gather", shapes, value, loc, w, grad)
    ref_out, ref = _grads("grid_sample", shapes, value, loc, w, grad)
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=0)
    for name, a, r in zip(("value", "locations", "weights"), got, ref):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, r, atol=tol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_gradients_equal_grid_sample_in_float64():
    _assert_same_grads(SHAPES, *_inputs(SHAPES, seed=0))


def test_gradients_equal_grid_sample_far_outside_and_near_the_border():
    value, loc, w = _inputs(SHAPES, seed=1, q=9)
    loc[:, 0] = 3.0  # far right/below: every corner outside
    loc[:, 1] = -2.0  # far left/above
    loc[:, 2, ..., 0] = -0.49 / 9  # just inside the left half-pixel of the widest level
    loc[:, 3, ..., 1] = 1.0 + 0.4 / 6  # within half a pixel below the bottom row
    _assert_same_grads(SHAPES, value, loc, w)
    _, (gv, gl, gw) = _grads("gather", SHAPES, value, loc, w)
    assert (gl[:, :2] == 0).all() and (gw[:, :2] == 0).all()  # zero padding: no gradient outside


def test_gradients_at_exact_pixel_centres_and_the_map_edges():
    """Integer pixel coordinates (the kinks of bilinear sampling: both take the derivative of the
    cell to the right/below), the first and last pixel centres, and the outer edges of the map."""
    value, loc, w = _inputs(POW2, seed=2, q=6, spread=1.0)
    size = torch.tensor([[w_, h] for h, w_ in POW2], dtype=torch.float64)[:, None]  # [levels, 1, 2]
    cells = torch.randint(0, 4, loc.shape, generator=torch.Generator().manual_seed(3)).double()
    centres = ((cells.minimum(size - 1) + 0.5) / size).to(torch.float64)
    loc[:, :3] = centres[:, :3]  # pixel centres, the last one included (minimum with size - 1)
    loc[:, 3] = 0.0  # the outer top-left corner of every level: pixel coordinate -0.5
    loc[:, 4] = 1.0  # the outer bottom-right corner: pixel coordinate size - 0.5
    loc[:, 5, ..., 0] = (0.5 / size[..., 0]).expand_as(loc[:, 5, ..., 0])  # the first column's centre
    _assert_same_grads(POW2, value, loc, w)


def test_nan_locations_give_zero_gradients():
    value, loc, w = _inputs(SHAPES, seed=4, b=1, q=3)
    loc[0, 1] = float("nan")
    _, (gv, gl, gw) = _grads("gather", SHAPES, value, loc, w)
    assert torch.isfinite(gv).all() and (gl[0, 1] == 0).all() and (gw[0, 1] == 0).all()


def test_gradcheck_tiny_case():
    value, loc, w = _inputs(SHAPES, seed=5, b=1, q=2, heads=2, c=2, points=2, spread=1.2)
    args = [t.requires_grad_() for t in (value, loc, w)]
    assert torch.autograd.gradcheck(
        lambda v, lo, ww: multi_scale_deformable_sample(v, SHAPES, lo, ww, method="gather"), args, atol=1e-7
    )


def test_float32_forward_equals_the_inference_gather():
    """Recording a gradient changes nothing in the forward: the same pixels give the same bits."""
    value, loc, w = (t.float() for t in _inputs(SHAPES, seed=6, b=2, q=40))
    size = torch.tensor([[w_, h] for h, w_ in SHAPES], dtype=torch.float32)[:, None]
    pixels = loc * size - 0.5
    inference = deformable_gather.gather_sample(value, SHAPES, pixels.clone(), w)
    training = deformable_gather.gather_sample(value.requires_grad_(), SHAPES, pixels.requires_grad_(), w)
    assert type(training.grad_fn).__name__ == "GatherSampleBackward"
    assert torch.equal(training.detach(), inference)


@pytest.mark.parametrize("floats", [1, 200, 1000])
def test_backward_in_chunks_equals_one_pass(monkeypatch, floats):
    """The backward walks the bags in chunks of ``_BACKWARD_FLOATS // (4 * samples * C)`` (at
    least one bag); any chunking gives the same gradients, the last chunk partial or not."""
    value, loc, w = _inputs(SHAPES, seed=7, b=2, q=11)
    _, whole = _grads("gather", SHAPES, value, loc, w)
    monkeypatch.setattr(deformable_gather, "_BACKWARD_FLOATS", floats)
    _, chunked = _grads("gather", SHAPES, value, loc, w)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)


def test_only_the_needed_gradients_are_computed():
    value, loc, w = _inputs(SHAPES, seed=8, b=1, q=4)
    v = value.clone().requires_grad_()
    out = multi_scale_deformable_sample(v, SHAPES, loc, w, method="gather")
    out.sum().backward()
    ref_v = value.clone().requires_grad_()
    multi_scale_deformable_sample(ref_v, SHAPES, loc, w, method="grid_sample").sum().backward()
    torch.testing.assert_close(v.grad, ref_v.grad, atol=TOL, rtol=0)


def test_bf16_values_train_through_a_float32_table():
    value, loc, w = (t.float() for t in _inputs(SHAPES, seed=9, b=1, q=5))
    low = value.bfloat16().requires_grad_()
    out = multi_scale_deformable_sample(low, SHAPES, loc, w, method="gather")
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    ref = low.detach().float().requires_grad_()
    multi_scale_deformable_sample(ref, SHAPES, loc, w, method="grid_sample").sum().backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), ref.grad, atol=2e-2, rtol=1e-2)  # bf16 rounding of the grad


def test_module_training_gradients_equal_grid_sample_path():
    """The module's training step through the gather (pixel coordinates from offsets and 4-d
    references) gives the parameters the gradients of the official grid_sample path."""
    torch.manual_seed(10)
    attn = randomize_(MultiScaleDeformableAttention(16, n_levels=4, n_heads=2, n_points=2).double(), seed=10)
    s = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, s, 16, dtype=torch.float64)
    ref_pts = (torch.rand(2, 5, 4, 4, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    grads = {}
    for method in ("gather", "grid_sample"):
        attn.method = method
        attn.zero_grad()
        ref_pts.grad = None
        attn(query, ref_pts, value, SHAPES).square().sum().backward()
        grads[method] = [p.grad.clone() for p in attn.parameters()] + [ref_pts.grad.clone()]
    for a, b in zip(grads["gather"], grads["grid_sample"]):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_auto_keeps_grid_sample_for_training_off_the_cpu():
    on_meta = torch.empty(2, device="meta", requires_grad=True)
    assert _resolve("auto", on_meta) == "grid_sample"
    with torch.no_grad():
        assert _resolve("auto", on_meta) == "gather"
    assert _resolve("auto", torch.ones(2, requires_grad=True)) == "gather"


def test_double_backward_is_refused():
    value, loc, w = _inputs(SHAPES, seed=11, b=1, q=2)
    value.requires_grad_()
    out = multi_scale_deformable_sample(value, SHAPES, loc, w, method="gather")
    (grad,) = torch.autograd.grad(out.square().sum(), value, create_graph=True)
    # first order only (once_differentiable): an error, not a second derivative that misses terms
    with pytest.raises(RuntimeError, match="once_differentiable|not have been used in the graph"):
        torch.autograd.grad(grad.sum(), value)
