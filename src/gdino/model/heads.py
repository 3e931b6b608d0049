"""Prediction heads: the box MLP and the contrastive (query x text token) classifier."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (not after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def contrastive_logits(queries: Tensor, text: Tensor, token_mask: Tensor, max_text_len: int) -> Tensor:
    """Dot-product logits of queries against text tokens, padded to ``max_text_len`` columns.

    Args:
        queries: ``[B, Q, d]``; text: ``[B, L, d]``; token_mask: ``[B, L]`` bool, True on real tokens.
    Returns:
        ``[B, Q, max_text_len]``, ``-inf`` at padding tokens and at columns ``>= L`` (under
        ``torch.export``: ``[B, Q, L]``, no padding columns, so the text length stays symbolic).
    """
    logits = queries @ text.transpose(-1, -2)
    logits = logits.masked_fill(~token_mask[:, None, :], float("-inf"))
    if torch.compiler.is_exporting():  # the exported graph returns the L input tokens' columns only
        return logits
    length = logits.shape[-1]
    if length >= max_text_len:
        return logits[..., :max_text_len]
    pad = logits.new_full((*logits.shape[:-1], max_text_len - length), float("-inf"))
    return torch.cat((logits, pad), dim=-1)
