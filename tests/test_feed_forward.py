"""Row-chunked, in-place feed-forward blocks equal the plain expression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdino.model.feed_forward import residual_feed_forward
from gdino.ops.fused_linear import linear_activation, linear_add


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_at", ["pre", "post"])
def test_chunked_equals_plain(activation, norm_at):
    torch.manual_seed(0)
    fc1, fc2, norm = nn.Linear(16, 64), nn.Linear(64, 16), nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
        norm.bias.normal_(0, 0.3)
    x = torch.randn(2, 37, 16)
    act = {"relu": torch.relu, "gelu": nn.functional.gelu}[activation]
    if norm_at == "pre":
        want = x + fc2(act(fc1(norm(x))))
        kwargs = {"pre_norm": norm}
    else:
        want = norm(x + fc2(act(fc1(x))))
        kwargs = {"post_norm": norm}
    with torch.no_grad():
        for rows in (5, 74, 1000):  # chunks that do not divide the 74 rows, exactly, and one chunk
            got = residual_feed_forward(x, fc1, fc2, activation, chunk_rows=rows, **kwargs)
            assert got.shape == x.shape
            torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=1e-6)
    # with a gradient recorded, the plain path runs and gradients flow
    out = residual_feed_forward(x, fc1, fc2, activation, chunk_rows=5, **kwargs)
    out.sum().backward()
    assert fc1.weight.grad is not None and torch.isfinite(fc1.weight.grad).all()


def _bf16_layer(d_in: int, d_out: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        layer.weight.normal_(0, d_in**-0.5)
        layer.bias.normal_(0, 0.5)
    return layer.to(torch.bfloat16)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_bf16_fused_linear_activation_and_add_round_once(activation):
    """In bf16 the activation and the residual add are applied to the float32 accumulator and
    rounded once: against a float64 computation on the same bf16 inputs, every element is within
    one bf16 rounding (relative 2^-8) plus the float32 accumulation (1e-5 absolute)."""
    fc = _bf16_layer(96, 384, seed=1)
    x = torch.randn(300, 96).bfloat16()
    residual = torch.randn(300, 384).bfloat16()
    act = {"relu": torch.relu, "gelu": nn.functional.gelu}[activation]
    exact = nn.functional.linear(x.double(), fc.weight.double(), fc.bias.double())
    with torch.no_grad():
        got_act = linear_activation(x, fc.weight, fc.bias, activation)
        got_add = linear_add(x, fc.weight, fc.bias, residual)
    for got, want in ((got_act, act(exact)), (got_add, exact + residual.double())):
        assert got.dtype == torch.bfloat16
        err = (got.double() - want).abs()
        assert (err <= 2**-8 * want.abs() + 1e-5).all(), err.max()


def test_float32_linears_keep_the_plain_arithmetic():
    """float32 (the parity path) is never fused: bit-identical to F.linear + activation / + residual."""
    torch.manual_seed(3)
    fc = nn.Linear(32, 64)
    x, residual = torch.randn(50, 32), torch.randn(50, 64)
    with torch.no_grad():
        plain = nn.functional.linear(x, fc.weight, fc.bias)
        assert torch.equal(linear_activation(x, fc.weight, fc.bias, "relu"), torch.relu(plain))
        assert torch.equal(linear_activation(x, fc.weight, fc.bias, "gelu"), nn.functional.gelu(plain))
        assert torch.equal(linear_add(x, fc.weight, fc.bias, residual), residual + plain)
    with pytest.raises(ValueError, match="unknown activation"):
        linear_activation(x, fc.weight, fc.bias, "tanh")


def test_bf16_chunked_feed_forward_close_to_float64():
    """The bf16 chunked block (fused products) against float64 on the same bf16 weights and input:
    within a few bf16 roundings of the output's scale."""
    fc1, fc2 = _bf16_layer(64, 256, seed=4), _bf16_layer(256, 64, seed=5)
    norm = nn.LayerNorm(64).to(torch.bfloat16)
    x = torch.randn(2, 700, 64).bfloat16()
    with torch.no_grad():
        got = residual_feed_forward(x, fc1, fc2, "relu", post_norm=norm, chunk_rows=256)
        x64 = x.double()
        h = torch.relu(nn.functional.linear(x64, fc1.weight.double(), fc1.bias.double()))
        want = nn.functional.layer_norm(x64 + nn.functional.linear(h, fc2.weight.double(), fc2.bias.double()), (64,))
    assert got.dtype == torch.bfloat16
    assert (got.double() - want).abs().max() < 4 * 2**-8 * want.abs().max()
