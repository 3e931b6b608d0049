"""Prediction heads: the box MLP and the contrastive (query x text token) classifier."""

from __future__ import annotations

import math

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
    return mask_and_pad(queries @ text.transpose(-1, -2), token_mask, max_text_len)


def mask_and_pad(logits: Tensor, token_mask: Tensor, max_text_len: int) -> Tensor:
    """``[B, Q, L]`` token logits -> ``[B, Q, max_text_len]``, ``-inf`` at padding and beyond ``L``."""
    logits = logits.masked_fill(~token_mask[:, None, :], float("-inf"))
    if torch.compiler.is_exporting():  # the exported graph returns the L input tokens' columns only
        return logits
    length = logits.shape[-1]
    if length >= max_text_len:
        return logits[..., :max_text_len]
    pad = logits.new_full((*logits.shape[:-1], max_text_len - length), float("-inf"))
    return torch.cat((logits, pad), dim=-1)


#: how a class head scales the query x token dot products
CONTRASTIVE_SCALES = ("none", "sqrt", "learned")


class ContrastiveHead(nn.Module):
    """A class head: query x text-token logits, optionally scaled and shifted.

    ``scale``: ``"none"`` (the plain dot product of the original Grounding DINO), ``"sqrt"``
    (divided by ``sqrt(d)``, MM-Grounding-DINO and LLMDet), ``"learned"`` (times ``exp(log_scale)``,
    a learned scalar starting at 0). ``bias``: a learned scalar added to every logit, starting at the
    focal-loss prior ``-log(99)``. With neither it has no parameters and equals
    :func:`contrastive_logits`.
    """

    def __init__(self, max_text_len: int, scale: str = "none", bias: bool = False) -> None:
        super().__init__()
        if scale not in CONTRASTIVE_SCALES:
            raise ValueError(f"scale must be one of {CONTRASTIVE_SCALES}, got {scale!r}")
        self.max_text_len = max_text_len
        self.scale = scale
        self.log_scale = nn.Parameter(torch.tensor(0.0)) if scale == "learned" else None
        self.bias = nn.Parameter(torch.tensor(-math.log(99.0))) if bias else None

    def forward(self, queries: Tensor, text: Tensor, token_mask: Tensor) -> Tensor:
        """queries ``[B,Q,d]``, text ``[B,L,d]``, token_mask ``[B,L]`` -> ``[B,Q,max_text_len]``."""
        logits = queries @ text.transpose(-1, -2)
        if self.scale == "sqrt":
            logits = logits / math.sqrt(queries.shape[-1])
        elif self.log_scale is not None:
            logits = logits * self.log_scale.exp()
        if self.bias is not None:
            logits = logits + self.bias
        return mask_and_pad(logits, token_mask, self.max_text_len)


def per_layer(head: nn.Module, layer: int) -> nn.Module:
    """The head of decoder layer ``layer``: ``head[layer]`` for per-layer heads, else the shared one."""
    return head[layer] if isinstance(head, nn.ModuleList) else head
