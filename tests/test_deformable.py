"""Multi-scale deformable attention against a float64 loop that follows the CUDA kernel's arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from gdino.ops.deformable import MultiScaleDeformableAttention, multi_scale_deformable_sample

SHAPES = [(6, 9), (3, 5), (2, 3), (1, 2)]


def kernel_reference(value, shapes, locations, weights):
    """Scalar loops as in the Deformable-DETR CUDA kernel: h = y*H - 0.5, w = x*W - 0.5, zero outside."""
    b, _, heads, c = value.shape
    _, q, _, levels, points, _ = locations.shape
    out = torch.zeros(b, q, heads, c, dtype=torch.float64)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    v64 = value.double()
    for bi in range(b):
        for qi in range(q):
            for m in range(heads):
                acc = torch.zeros(c, dtype=torch.float64)
                for lvl, (hh, ww) in enumerate(shapes):
                    for p in range(points):
                        x, y = locations[bi, qi, m, lvl, p].double().tolist()
                        hpix, wpix = y * hh - 0.5, x * ww - 0.5
                        if not (hpix > -1 and wpix > -1 and hpix < hh and wpix < ww):
                            continue
                        h0, w0 = math.floor(hpix), math.floor(wpix)
                        lh, lw = hpix - h0, wpix - w0
                        sample = torch.zeros(c, dtype=torch.float64)
                        for dy, dx, f in (
                            (0, 0, (1 - lh) * (1 - lw)),
                            (0, 1, (1 - lh) * lw),
                            (1, 0, lh * (1 - lw)),
                            (1, 1, lh * lw),
                        ):
                            yy, xx = h0 + dy, w0 + dx
                            if 0 <= yy < hh and 0 <= xx < ww:
                                sample += f * v64[bi, starts[lvl] + yy * ww + xx, m]
                        acc += float(weights[bi, qi, m, lvl, p]) * sample
                out[bi, qi, m] = acc
    return out.view(b, q, heads * c)


def _inputs(seed=0, b=2, q=5, heads=2, c=3, points=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(b, s, heads, c, generator=g).to(dtype)
    # locations spread slightly outside [0, 1] to exercise the zero padding
    locations = (torch.rand(b, q, heads, len(SHAPES), points, 2, generator=g) * 1.2 - 0.1).to(dtype)
    weights = torch.rand(b, q, heads, len(SHAPES), points, generator=g)
    weights = (weights / weights.sum((-1, -2), keepdim=True)).to(dtype)
    return value, locations, weights


@pytest.mark.parametrize("method", ["gather", "grid_sample", "corners"])
def test_sampling_matches_float64_kernel_reference(method):
    value, loc, w = _inputs()
    got = multi_scale_deformable_sample(value, SHAPES, loc, w, method=method)
    ref = kernel_reference(value, SHAPES, loc, w)
    assert got.shape == ref.shape
    # fp32 against fp64: the official notes measure ~7.6e-6 for grid_sample at 900 queries
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["gather", "grid_sample"])
def test_sampling_float64_is_exact(method):
    value, loc, w = _inputs(seed=1)
    got = multi_scale_deformable_sample(value.double(), SHAPES, loc.double(), w.double(), method=method)
    torch.testing.assert_close(got, kernel_reference(value, SHAPES, loc.double(), w.double()), atol=1e-12, rtol=0)


def _random_module(seed: int, std: float) -> MultiScaleDeformableAttention:
    """A 32-wide module (4 levels, 4 heads, 2 points) with every parameter drawn from N(0, std)."""
    torch.manual_seed(seed)
    attn = MultiScaleDeformableAttention(32, n_levels=4, n_heads=4, n_points=2)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, std)
    return attn


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_module_half_precision_close_to_fp32(dtype, tol):
    attn = _random_module(seed=0, std=0.2)
    s = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(2, 7, 32), torch.randn(2, s, 32)
    ref_pts = torch.rand(2, 7, 4, 2)
    shapes = torch.tensor(SHAPES)
    with torch.no_grad():
        ref = attn(query, ref_pts, value, shapes)
        half = attn.to(dtype)(query.to(dtype), ref_pts.to(dtype), value.to(dtype), shapes)
    assert half.dtype == dtype
    rel = ((half.float() - ref).norm() / ref.norm()).item()
    assert rel < tol, rel


def test_module_under_bf16_autocast_runs_and_is_close():
    torch.manual_seed(1)
    attn = MultiScaleDeformableAttention(32, n_levels=4, n_heads=4, n_points=2)
    s = sum(h * w for h, w in SHAPES)
    query, value, ref_pts = torch.randn(1, 4, 32), torch.randn(1, s, 32), torch.rand(1, 4, 4, 4)
    with torch.no_grad():
        ref = attn(query, ref_pts, value, SHAPES)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(query, ref_pts, value, SHAPES)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 4e-2


def test_module_four_coordinate_references_and_padding():
    """4-d references scale offsets by w,h/(2*points); padded values contribute nothing."""
    torch.manual_seed(2)
    attn = MultiScaleDeformableAttention(16, n_levels=4, n_heads=2, n_points=2).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    s = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(1, 3, 16, dtype=torch.float64), torch.randn(1, s, 16, dtype=torch.float64)
    ref_pts = torch.rand(1, 3, 4, 4, dtype=torch.float64) * 0.5 + 0.25
    padding = torch.zeros(1, s, dtype=torch.bool)
    padding[:, ::3] = True
    out = attn(query, ref_pts, value, SHAPES, None, padding)
    # independent recomputation through the loop reference
    v = attn.value_proj(value).masked_fill(padding[..., None], 0).view(1, s, 2, 8)
    off = attn.sampling_offsets(query).view(1, 3, 2, 4, 2, 2)
    w = attn.attention_weights(query).view(1, 3, 2, 8).softmax(-1).view(1, 3, 2, 4, 2)
    loc = ref_pts[:, :, None, :, None, :2] + off / 2 * ref_pts[:, :, None, :, None, 2:] * 0.5
    with torch.no_grad():
        expected = attn.output_proj(kernel_reference(v, SHAPES, loc, w))
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    # changing padded values changes nothing
    value2 = value.clone()
    value2[padding] += 5.0
    torch.testing.assert_close(attn(query, ref_pts, value2, SHAPES, None, padding), out, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["gather", "grid_sample"])
def test_gradients_match_float64_reference(method):
    value, loc, w = _inputs(seed=3, b=1, q=3)
    value, loc, w = (t.double().requires_grad_() for t in (value, loc, w))
    out = multi_scale_deformable_sample(value, SHAPES, loc, w, method=method)
    assert torch.autograd.gradcheck(
        lambda v, ww: multi_scale_deformable_sample(v, SHAPES, loc.detach(), ww, method=method), (value, w), atol=1e-6
    )
    out.sum().backward()
    assert loc.grad is not None and torch.isfinite(loc.grad).all()


def test_auto_gathers_on_the_cpu_in_inference_and_training():
    value, loc, w = _inputs(seed=5, b=1, q=4)
    with torch.no_grad():
        inference = multi_scale_deformable_sample(value, SHAPES, loc, w)
    value.requires_grad_()
    training = multi_scale_deformable_sample(value, SHAPES, loc, w)
    assert type(training.grad_fn).__name__ == "GatherSampleBackward"  # the hand-written backward
    torch.testing.assert_close(training.detach(), inference, atol=1e-6, rtol=1e-6)  # pixels in grid_sample's arithmetic
    grads = {}
    for method in ("grid_sample", "auto"):
        v = value.detach().clone().requires_grad_()
        multi_scale_deformable_sample(v, SHAPES, loc, w, method=method).square().sum().backward()
        grads[method] = v.grad
    torch.testing.assert_close(grads["auto"], grads["grid_sample"], atol=1e-5, rtol=1e-5)


def test_far_outside_and_nan_locations_contribute_nothing():
    value, loc, w = _inputs(seed=4, b=1, q=2)
    loc[0, 0] = 7.0  # far right/below
    loc[0, 1] = float("nan")
    out = multi_scale_deformable_sample(value, SHAPES, loc, w)
    assert (out == 0).all()


def test_shape_mismatch_is_reported():
    attn = MultiScaleDeformableAttention(16, n_levels=4, n_heads=2, n_points=2)
    with pytest.raises(ValueError, match="do not add up"):
        attn(torch.randn(1, 2, 16), torch.rand(1, 2, 4, 2), torch.randn(1, 10, 16), SHAPES)


@pytest.mark.parametrize("coords", [2, 4])
def test_module_gather_path_equals_grid_sample_path(coords):
    """The module's gather path computes pixel coordinates in place from the offsets; it must give
    the official (normalized locations, grid_sample) result, with and without padding."""
    attn = _random_module(seed=7, std=0.3)
    s = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(2, 9, 32), torch.randn(2, s, 32)
    ref_pts = torch.rand(2, 9, 4, coords)
    padding = torch.rand(2, s) < 0.2
    outs = {}
    for method in ("gather", "grid_sample"):
        attn.method = method
        with torch.no_grad():
            outs[method] = attn(query, ref_pts, value, SHAPES, None, padding)
    torch.testing.assert_close(outs["gather"], outs["grid_sample"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_bags", [1, 7, 40])
def test_gather_in_query_chunks_equals_one_pass(monkeypatch, chunk_bags):
    """Large inputs are gathered in chunks of (batch x query x head) bags; every chunking (one
    query per chunk, chunks that do not divide the queries) gives the one-pass result."""
    from gdino.ops import deformable_gather

    value, loc, w = _inputs(seed=6, b=2, q=11)
    with torch.no_grad():
        whole = multi_scale_deformable_sample(value, SHAPES, loc, w, method="gather")
        monkeypatch.setattr(deformable_gather, "_CHUNK_BAGS", chunk_bags)
        chunked = multi_scale_deformable_sample(value, SHAPES, loc, w, method="gather")
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chunked.double(), kernel_reference(value, SHAPES, loc, w), atol=2e-6, rtol=1e-6)


def test_gather_reads_a_bf16_table_with_float32_coordinates():
    """bf16 values on the CPU are gathered from a bf16 table (no float32 copy), with float32 pixel
    coordinates and weights: against the float64 kernel on the same bf16-rounded values, the only
    errors are the bf16 per-sample weights (relative 2^-9 each) and the output's rounding
    (relative 2^-9), so |err| <= 2^-7 of the largest output (a wrong row or corner is O(1))."""
    value, loc, w = _inputs(seed=8, b=2, q=23, heads=2, c=8, points=3)
    value = value.bfloat16()
    with torch.no_grad():
        got = multi_scale_deformable_sample(value, SHAPES, loc, w, method="gather")
    assert got.dtype == torch.bfloat16
    ref = kernel_reference(value.float(), SHAPES, loc, w)
    err = (got.double() - ref).abs().max().item()
    assert err <= 2**-7 * ref.abs().max().item(), err
    # and the module keeps the table in bf16 (gather) while its coordinates stay float32: a bf16
    # module equals the float32 module run on the same bf16-rounded value projection to that bound
    attn = _random_module(seed=9, std=0.2)
    s = sum(h * w for h, w in SHAPES)
    query, val, ref_pts = torch.randn(1, 6, 32), torch.randn(1, s, 32), torch.rand(1, 6, 4, 4)
    with torch.no_grad():
        low = attn.to(torch.bfloat16)(query.bfloat16(), ref_pts, val.bfloat16(), SHAPES)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
