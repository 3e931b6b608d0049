"""The feature enhancer: per layer, image<->text fusion, text self-attention, image deformable
self-attention (the official order). Parameter names follow the official checkpoint."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gdino.config import GroundingDINOConfig
from gdino.model.attention import MultiheadAttention
from gdino.model.feed_forward import residual_feed_forward
from gdino.model.fusion import BiAttentionBlock
from gdino.model.position import text_position_embedding
from gdino.ops.deformable import MultiScaleDeformableAttention
from gdino.ops.relu_mlp import relu_mlp


class DeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention over all image tokens + FFN."""

    def __init__(self, d_model: int, ffn_dim: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: list[tuple[int, int]],
        level_start_index: Tensor | None,
        padding: Tensor | None,
    ) -> Tensor:
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding)
        src = self.norm1(src + attn)
        return residual_feed_forward(src, self.linear1, self.linear2, "relu", post_norm=self.norm2)


class TextEnhancerLayer(nn.Module):
    """Post-norm text self-attention restricted by the sub-sentence mask, + FFN.

    Positions are added to queries and keys only; no key-padding mask (the sub-sentence mask
    already keeps real tokens away from padding), as the official code.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, text: Tensor, self_attention_masks: Tensor, pos: Tensor) -> Tensor:
        """text ``[B,L,d]``, self_attention_masks ``[B,L,L]`` bool True=may attend, pos ``[B,L,d]``."""
        qk = text + pos
        attn = self.self_attn(qk, qk, text, blocked=~self_attention_masks[:, None])
        text = self.norm1(text + attn)
        return self.norm2(text + relu_mlp(text, self.linear1, self.linear2))


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Centres of every feature-map cell, relative to the valid region, for every level.

    Args:
        spatial_shapes: ``[(H_l, W_l)]``; valid_ratios: ``[B, levels, 2]`` (w, h) fractions.
    Returns:
        ``[B, S, levels, 2]`` (x, y), as the official ``get_reference_points``.
    """
    refs = []
    device = valid_ratios.device
    for lvl, (h, w) in enumerate(spatial_shapes):
        # arange + 0.5 equals linspace(0.5, size - 0.5, size) bit for bit and exports with symbolic sizes
        ref_y, ref_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device) + 0.5,
            torch.arange(w, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]


class Encoder(nn.Module):
    """Six (configurable) enhancer layers: ``fusion_layers``, ``text_layers``, ``layers``."""

    def __init__(self, cfg: GroundingDINOConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d, cfg.dim_feedforward, cfg.num_feature_levels, cfg.nheads, cfg.enc_n_points)
            for _ in range(cfg.enc_layers)
        )
        self.text_layers = nn.ModuleList(
            TextEnhancerLayer(d, cfg.text_nheads, cfg.text_ffn_dim) for _ in range(cfg.enc_layers)
        )
        self.fusion_layers = nn.ModuleList(
            BiAttentionBlock(d, d, cfg.fusion_dim, cfg.fusion_nheads, cfg.fusion_init_gamma, cfg.fusion_droppath)
            for _ in range(cfg.enc_layers)
        )
        self.use_checkpoint = False

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        spatial_shapes: list[tuple[int, int]],
        shapes: list[tuple[int, int]],
        level_start_index: Tensor | None,
        valid_ratios: Tensor,
        padding: Tensor | None,
        text: Tensor,
        text_padding: Tensor,
        text_self_attention_masks: Tensor,
        text_position_ids: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Returns the enhanced image tokens ``[B,S,d]`` and text tokens ``[B,L,d]``."""
        reference_points = encoder_reference_points(shapes, valid_ratios).to(src.dtype)
        pos_text = text_position_embedding(text_position_ids, text.shape[-1]).to(text.dtype)
        ckpt = self.use_checkpoint and self.training
        for fusion, text_layer, layer in zip(self.fusion_layers, self.text_layers, self.layers):
            if ckpt:
                src, text = checkpoint(fusion, src, text, padding, text_padding, use_reentrant=False)
            else:
                src, text = fusion(src, text, padding, text_padding)
            text = text_layer(text, text_self_attention_masks, pos_text)
            args = (src, pos, reference_points, spatial_shapes, level_start_index, padding)
            src = checkpoint(layer, *args, use_reentrant=False) if ckpt else layer(*args)
        return src, text
