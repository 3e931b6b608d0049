"""Bi-directional image <-> text cross-attention (the feature enhancer's fusion layer).

Follows the official ``BiAttentionBlock``/``BiMultiHeadAttention`` with one deliberate fix: the
score normalization subtracts the maximum of each batch item (over heads, image and text tokens)
instead of one maximum over the whole batch, so one image's scores can no longer flatten another's
through the +-50000 clamp. For a single image the two are identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CLAMP = 50000.0


class DropPath(nn.Module):
    """Stochastic depth per sample; identity in eval mode or with ``p == 0``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def add_to(self, x: Tensor, y: Tensor, gamma: Tensor | None = None) -> Tensor:
        """``x + self(gamma * y)`` (``gamma`` a per-channel scale, or None for 1), bit for bit.

        In training with ``p > 0`` the mask and ``1 / keep`` are one ``[B, 1, ...]`` divisor,
        ``keep / mask`` (infinite for a dropped sample: ``y / inf`` is the 0 of ``y * 0``), applied
        and added in one pass (:class:`ResidualDivide`) instead of three; the same values as the
        three (``y * 1 / keep`` is ``y / keep``), forward and backward, from the same mask draws."""
        if gamma is not None:
            y = gamma * y
        if not self.training or self.p == 0.0 or x.shape != y.shape:
            return x + self(y)
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = y.new_empty(shape).bernoulli_(keep)
        divisor = torch.full(shape, keep, dtype=torch.result_type(x, y), device=y.device).div_(mask)
        return ResidualDivide.apply(x, y, divisor)


class ResidualDivide(torch.autograd.Function):
    """``x + y / divisor`` for same-shaped ``x``, ``y`` and a constant broadcast ``divisor``, in one
    ``addcdiv``; its backward divides the gradient as ``(y * m) / keep``'s backward does (autograd's
    ``addcdiv`` multiplies by ``1 / divisor`` instead, a rounding apart)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, divisor: Tensor) -> Tensor:
        ctx.save_for_backward(divisor)
        return torch.addcdiv(x, y, divisor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (divisor,) = ctx.saved_tensors
        return grad, grad / divisor, None


class BiMultiHeadAttention(nn.Module):
    """Image tokens attend to text tokens and text tokens attend to image tokens, in one step.

    Parameter names match the official checkpoint (``v_proj``, ``l_proj``, ``values_v_proj``,
    ``values_l_proj``, ``out_v_proj``, ``out_l_proj``).
    """

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.embed_dim = embed_dim
        self.scale = self.head_dim**-0.5
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for lin in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj, self.out_l_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, v: Tensor, l: Tensor, image_padding: Tensor | None, text_padding: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """v ``[B,N,v_dim]``, l ``[B,L,l_dim]``, paddings bool True=padding -> (dv, dl).

        Computed re-associated (the same products in another order): the image-side projections
        ``v_proj``, ``values_v_proj`` and ``out_v_proj`` act on N image tokens in the official code
        (3 x N x v_dim x embed_dim multiply-adds); here they are folded into the L text tokens
        first, so the image tokens only meet ``[v_dim, heads*L]`` matrices. Equal to the direct
        order up to float rounding, for any prompt length.
        """
        b, n, v_dim = v.shape
        length = l.shape[1]
        heads, hd = self.num_heads, self.head_dim
        k = self._heads(self.l_proj(l))  # [B, h, L, hd]
        val_l = self._heads(self.values_l_proj(l))  # [B, h, L, hd]
        # scores = (v Wv_h^T + bv_h) k_h^T * scale = v (Wv_h^T k_h^T) + bv_h k_h^T  (times scale)
        wv = self.v_proj.weight.view(heads, hd, v_dim)
        m = torch.einsum("hdc,bhtd->bcht", wv, k).reshape(b, v_dim, heads * length) * self.scale
        c = torch.einsum("hd,bhtd->bht", self.v_proj.bias.view(heads, hd), k).reshape(b, 1, heads * length)
        scores = torch.baddbmm(c * self.scale, v, m).view(b, n, heads, length).transpose(1, 2)  # [B, h, N, L]
        item_max = scores.flatten(1).max(dim=1).values.view(b, 1, 1, 1)
        scores = (scores - item_max).clamp(-CLAMP, CLAMP)
        scores_t = scores.transpose(-1, -2)  # [B, h, L, N]
        scores_t = (scores_t - scores_t.max(dim=-1, keepdim=True).values).clamp(-CLAMP, CLAMP)
        if image_padding is not None:
            scores_t = scores_t.masked_fill(image_padding[:, None, None, :], float("-inf"))
        if text_padding is not None:
            scores = scores.masked_fill(text_padding[:, None, None, :], float("-inf"))
        attn_l = F.softmax(scores_t, dim=-1)
        attn_v = F.softmax(scores, dim=-1)
        # image side: sum_h attn_v_h (val_l_h Wout_h^T) + b_out
        wout = self.out_v_proj.weight.view(v_dim, heads, hd)
        p = torch.einsum("bhtd,chd->bhtc", val_l, wout).reshape(b, heads * length, v_dim)
        attn_v = attn_v.permute(0, 2, 1, 3).reshape(b, n, heads * length)
        out_v = torch.baddbmm(self.out_v_proj.bias.view(1, 1, v_dim), attn_v, p)
        # text side: attn_l_h (v Wvv_h^T + bvv_h) = (attn_l_h v) Wvv_h^T + bvv_h (rows of attn_l sum to 1)
        pooled = torch.bmm(attn_l.reshape(b, heads * length, n), v).view(b, heads, length, v_dim)
        wvv = self.values_v_proj.weight.view(heads, hd, v_dim)
        val_v = torch.einsum("bhtc,hdc->bhtd", pooled, wvv) + self.values_v_proj.bias.view(1, heads, 1, hd)
        out_l = val_v.transpose(1, 2).reshape(b, length, self.embed_dim)
        return out_v, self.out_l_proj(out_l)


class BiAttentionBlock(nn.Module):
    """LayerNorm both streams, fuse, add gated residuals to the *normalized* inputs (official)."""

    def __init__(
        self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, init_gamma: float = 1e-4, drop_path: float = 0.1
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.gamma_v = nn.Parameter(init_gamma * torch.ones(v_dim))
        self.gamma_l = nn.Parameter(init_gamma * torch.ones(l_dim))

    def forward(
        self, v: Tensor, l: Tensor, image_padding: Tensor | None, text_padding: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        v = self.layer_norm_v(v)
        l = self.layer_norm_l(l)
        dv, dl = self.attn(v, l, image_padding, text_padding)
        return self.drop_path.add_to(v, dv, self.gamma_v), self.drop_path.add_to(l, dl, self.gamma_l)
