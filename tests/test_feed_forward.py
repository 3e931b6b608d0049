"""Row-chunked, in-place feed-forward blocks equal the plain expression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdino.model.feed_forward import residual_feed_forward


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
