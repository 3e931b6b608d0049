"""Residual feed-forward blocks, computed in row chunks when no gradient is recorded.

A transformer FFN over the encoder's ~22k image tokens (800x1333) writes a 22k x 2048 hidden
activation (180 MB) to memory and reads it back several times: the bias add, the activation, the
second GEMM. Chunked over rows, the hidden activation of one chunk stays in cache and the
activation runs in place (in bf16 it is fused into the first product and the residual add into the
second: gdino.ops.fused_linear). Rows are independent, so chunking changes no result beyond the last bits
of GEMM blocking. With a gradient recorded the plain path runs (autograd keeps the activations), and
on GPUs too: there a 1024-row GEMM is too small to fill the device, and each chunk costs launches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gdino.ops.fused_linear import linear_activation, linear_add
from gdino.ops.relu_mlp import relu_mlp

#: Rows per chunk: the hidden activation of one chunk (rows x hidden floats) fits in the L2/L3 cache.
CHUNK_ROWS = 1024


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def residual_feed_forward(
    x: Tensor,
    fc1: nn.Linear,
    fc2: nn.Linear,
    activation: str,
    pre_norm: nn.Module | None = None,
    post_norm: nn.Module | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Tensor:
    """``post_norm(x + fc2(act(fc1(pre_norm(x)))))`` (either norm optional), rows of ``x`` independent.

    ``x``: ``[..., d]``. Chunked and in place when gradients are off, else the plain expression.
    """
    pre = pre_norm if pre_norm is not None else nn.Identity()
    post = post_norm if post_norm is not None else nn.Identity()
    # export: no loop over a symbolic row count; GPUs: a chunk is too small to fill the device
    if torch.is_grad_enabled() or torch.compiler.is_exporting() or x.device.type != "cpu":
        if activation == "relu":  # training on the CPU: ReLU and its backward in place (gdino.ops.relu_mlp)
            return post(x + relu_mlp(pre(x), fc1, fc2))
        return post(x + fc2(ACTIVATIONS[activation](fc1(pre(x)))))
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], chunk_rows):
        part = flat[start : start + chunk_rows]
        # bf16: activation and residual add fused into the products (gdino.ops.fused_linear)
        hidden = linear_activation(pre(part), fc1.weight, fc1.bias, activation)
        out[start : start + chunk_rows] = post(linear_add(hidden, fc2.weight, fc2.bias, part))
    return out.view(x.shape)
