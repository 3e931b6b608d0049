"""Multi-head attention with ``nn.MultiheadAttention``'s parameter names, batch-first, on SDPA.

Keeping the names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) lets official checkpoints
load one-to-one; using ``scaled_dot_product_attention`` with a per-item boolean mask keeps batch
items independent (the official code repeats masks in head-major order, mixing items).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention.

    ``forward(query [B,Lq,d], key [B,Lk,d], value [B,Lk,d], blocked=None) -> [B,Lq,d]`` where
    ``blocked`` is a bool mask broadcastable to ``[B, heads, Lq, Lk]``, True where attention is
    NOT allowed (the meaning of a bool ``attn_mask`` in ``nn.MultiheadAttention``).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, blocked: Tensor | None = None) -> Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q))
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        allowed = None if blocked is None else ~blocked
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.embed_dim)
        return self.out_proj(out)
