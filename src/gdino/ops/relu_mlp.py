"""``fc2(relu(fc1(x)))`` for training, with the ReLU and its backward in place.

Autograd's version of this two-layer block allocates two more hidden-sized tensors than it needs:
``F.relu`` writes a new tensor beside ``fc1``'s output (which nothing else reads), and ReLU's
backward writes another beside the gradient of the hidden activation (which nothing else reads
either). At the encoder's sizes a hidden tensor is large (Swin-T at 512 px, batch 2: 10880 x 2048
floats, 89 MB), and on the CPU every fresh allocation that size is new pages from the kernel,
faulted in on first write: each costs about as much as the pass over it. :class:`ReluMLP` runs the
ReLU on ``fc1``'s output, and its backward computes the hidden gradient in row chunks of a reused
buffer, masked in place; the operations are the ones autograd runs for ``F.linear`` (``addmm``
forward; ``grad @ W``, ``grad^T @ input`` and ``grad.sum(0)`` backward), the first layer's weight
and bias gradients summed over the chunks (the same values up to float rounding). The first
layer's bias is added inside its matrix product, as a column of ones in the input
(:func:`_with_bias_column`), instead of ``addmm``'s pass that copies it into the output first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Rows per chunk of the hidden gradient (1024 x 2048 floats: 8 MB, L2/L3-sized).
CHUNK_ROWS = 1024


class ReluMLP(torch.autograd.Function):
    """``F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)`` for 2-d ``x``; biases required."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        hidden = torch.mm(*_with_bias_column(x, w1, b1)).relu_()
        ctx.save_for_backward(x, w1, hidden, w2)
        return torch.addmm(b2, hidden, w2.t())

    @staticmethod
    @once_differentiable  # no double backward: a clear error instead of a wrong graph
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w1, hidden, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad_w2 = grad.t().mm(hidden) if need_w2 else None
        grad_b2 = grad.sum(0) if need_b2 else None
        grad_x = grad_w1 = grad_b1 = None
        if need_x or need_w1 or need_b1:
            # the hidden gradient one row chunk at a time, in a reused cache-sized buffer: no
            # hidden-sized tensor (89 MB at Swin-T 512), its masking and bias sum cache-resident;
            # the weight and bias gradients accumulate over the chunks
            rows, width = hidden.shape
            chunk = max(1, min(rows, CHUNK_ROWS))  # relu_mlp sends only CPU tensors here
            buffer = grad.new_empty(chunk, width)
            grad_w1 = torch.zeros_like(w1) if need_w1 else None
            grad_b1 = grad.new_zeros(width) if need_b1 else None
            grad_x = torch.empty_like(x) if need_x else None
            for r0 in range(0, rows, chunk):
                r1 = min(rows, r0 + chunk)
                part = torch.mm(grad[r0:r1], w2, out=buffer[: r1 - r0])
                # ReLU's backward written into its own input: zero where the output is not positive
                torch.ops.aten.threshold_backward.grad_input(part, hidden[r0:r1], 0, grad_input=part)
                if grad_w1 is not None:
                    grad_w1.addmm_(part.t(), x[r0:r1])
                if grad_b1 is not None:
                    grad_b1 += part.sum(0)
                if grad_x is not None:
                    torch.mm(part, w1, out=grad_x[r0:r1])
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def _with_bias_column(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """``(x | 1 | 0...)`` and ``(weight | bias | 0...)``, padded to a multiple of 8 columns: their
    product is ``F.linear(x, weight, bias)`` with the bias added inside the matrix product.

    ``addmm`` first copies the bias into every row of its output, a pass over the whole hidden
    activation (10880 x 2048 floats at Swin-T 512 px, batch 2: 13-30 ms per encoder layer on this
    project's CPU), which the extra input column replaces (1-2 ms to build; the product's time is
    unchanged at 264 instead of 256 columns)."""
    rows, width = x.shape
    padded = (width + 8) // 8 * 8  # at least one column more
    x_aug = x.new_empty(rows, padded)
    x_aug[:, :width] = x
    x_aug[:, width] = 1
    x_aug[:, width + 1 :] = 0
    w_aug = weight.new_zeros(weight.shape[0], padded)
    w_aug[:, :width] = weight
    w_aug[:, width] = bias
    return x_aug, w_aug.t()


def relu_mlp(x: Tensor, fc1: torch.nn.Linear, fc2: torch.nn.Linear) -> Tensor:
    """``fc2(relu(fc1(x)))``; through :class:`ReluMLP` when a gradient is recorded on the CPU
    outside autocast with biases and one dtype (else the plain expression, as before)."""
    plain = (
        not torch.is_grad_enabled()
        or x.device.type != "cpu"
        or torch.is_autocast_enabled("cpu")
        or fc1.bias is None
        or fc2.bias is None
        or len({x.dtype, fc1.weight.dtype, fc2.weight.dtype}) > 1
        or torch.compiler.is_compiling()
    )
    if plain:
        return fc2(torch.relu(fc1(x)))
    out = ReluMLP.apply(x.reshape(-1, x.shape[-1]), fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    return out.view(*x.shape[:-1], out.shape[-1])
