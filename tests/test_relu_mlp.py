"""``ReluMLP`` (ReLU and its backward in place) against autograd's ``fc2(relu(fc1(x)))``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gdino.ops import relu_mlp as relu_mlp_module
from gdino.ops.relu_mlp import ReluMLP, relu_mlp


def _layers(dtype: torch.dtype, seed: int = 0) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    return nn.Linear(12, 40).to(dtype), nn.Linear(40, 12).to(dtype)


def _grads(fn, x, fc1, fc2):
    x = x.detach().clone().requires_grad_()
    for p in (*fc1.parameters(), *fc2.parameters()):
        p.grad = None
    out = fn(x, fc1, fc2)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape))
    return out.detach(), [x.grad] + [p.grad for p in (*fc1.parameters(), *fc2.parameters())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_rows", [4, 21, 1024])
def test_output_and_gradients_equal_autograd(monkeypatch, dtype, chunk_rows):
    """Outputs and gradients equal autograd's up to float rounding (the first layer's bias is added
    inside its product; the backward sums the first layer's gradients over row chunks: 21 rows in
    chunks of 4, in one of 21, in one partial chunk). 3-d input; some hidden units negative for
    every row, so the ReLU mask matters."""
    monkeypatch.setattr(relu_mlp_module, "CHUNK_ROWS", chunk_rows)
    fc1, fc2 = _layers(dtype)
    with torch.no_grad():
        fc1.bias[:5] = -10.0  # always off
    x = torch.randn(3, 7, 12, dtype=dtype)
    out, grads = _grads(relu_mlp, x, fc1, fc2)
    ref_out, ref = _grads(lambda x, a, b: b(torch.relu(a(x))), x, fc1, fc2)
    assert out.shape == (3, 7, 12)
    torch.testing.assert_close(out, ref_out, atol=1e-6 if dtype == torch.float32 else 1e-13, rtol=0)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, atol=1e-6 if dtype == torch.float32 else 1e-13, rtol=0)
    assert (grads[1][:5] == 0).all() and (grads[2][:5] == 0).all()  # no gradient through dead units


@pytest.mark.parametrize("width", [7, 8, 256])
def test_bias_column_product_equals_linear(width):
    """``x | 1 | 0...`` times ``W | b | 0...`` is ``F.linear(x, W, b)`` (float64 reference), padded
    to a multiple of 8 columns with at least one more than the input."""
    from gdino.ops.relu_mlp import _with_bias_column

    gen = torch.Generator().manual_seed(width)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((300, width), (64, width), (64,)))
    w /= width**0.5  # outputs of order one, as a layer's
    x_aug, w_aug = _with_bias_column(x, w, b)
    assert x_aug.shape[1] % 8 == 0 and x_aug.shape[1] > width and w_aug.shape == (x_aug.shape[1], 64)
    want = torch.nn.functional.linear(x.double(), w.double(), b.double())
    torch.testing.assert_close(torch.mm(x_aug, w_aug).double(), want, atol=1e-5, rtol=1e-5)


def test_gradcheck():
    fc1, fc2 = _layers(torch.float64, seed=1)
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    params = (fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    assert torch.autograd.gradcheck(ReluMLP.apply, (x, *params))


def test_frozen_layers_and_inputs_without_gradient():
    fc1, fc2 = _layers(torch.float32, seed=2)
    fc1.requires_grad_(False)
    x = torch.randn(4, 12)
    out = relu_mlp(x, fc1, fc2)
    out.sum().backward()
    assert fc1.weight.grad is None and fc2.weight.grad is not None
    want = fc2.weight.grad.clone()
    fc2.weight.grad = None
    fc2(torch.relu(fc1(x))).sum().backward()
    torch.testing.assert_close(fc2.weight.grad, want, atol=0, rtol=0)


def test_inference_and_autocast_take_the_plain_expression():
    fc1, fc2 = _layers(torch.float32, seed=3)
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert relu_mlp(x, fc1, fc2).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = relu_mlp(x, fc1, fc2)
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ == "AddmmBackward0"
    assert type(relu_mlp(x, fc1, fc2).grad_fn.next_functions[0][0]).__name__ == "ReluMLPBackward"
