"""Cross-modality decoder: per layer self-attention -> text cross-attention -> deformable image
cross-attention -> FFN (post-norm, the official order), with iterative box refinement."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gdino.config import GroundingDINOConfig
from gdino.model.attention import MultiheadAttention
from gdino.model.heads import MLP
from gdino.model.position import box_sine_embedding
from gdino.ops.boxes import inverse_sigmoid
from gdino.ops.deformable import MultiScaleDeformableAttention
from gdino.ops.relu_mlp import relu_mlp


@dataclass
class DenoisingQueries:
    """Extra training queries placed before the matching queries.

    content: ``[B, N, d]``; ref_logits: ``[B, N, 4]`` inverse-sigmoid cxcywh boxes;
    attn_mask: ``[N+Q, N+Q]`` bool, True where a query may NOT attend to another.
    """

    content: Tensor
    ref_logits: Tensor
    attn_mask: Tensor

    @property
    def num(self) -> int:
        return self.content.shape[1]


class DecoderLayer(nn.Module):
    """One decoder layer with the official parameter names."""

    def __init__(self, d_model: int, ffn_dim: int, n_heads: int, n_levels: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ca_text = MultiheadAttention(d_model, n_heads)
        self.catext_norm = nn.LayerNorm(d_model)
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        padding: Tensor | None,
        spatial_shapes: list[tuple[int, int]],
        level_start_index: Tensor | None,
        text: Tensor,
        text_padding: Tensor,
        self_blocked: Tensor | None,
    ) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(q, q, tgt, blocked=self_blocked))
        tgt = self.catext_norm(tgt + self.ca_text(tgt + query_pos, text, text, blocked=text_padding[:, None, None, :]))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index, padding)
        tgt = self.norm1(tgt + attn)
        return self.norm3(tgt + relu_mlp(tgt, self.linear1, self.linear2))


class Decoder(nn.Module):
    """``layers``, the shared output ``norm`` and ``ref_point_head`` (box sine -> query position)."""

    def __init__(self, cfg: GroundingDINOConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.dim_feedforward, cfg.nheads, cfg.num_feature_levels, cfg.dec_n_points)
            for _ in range(cfg.dec_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.ref_point_head = MLP(2 * d, d, d, 2)
        self.eps = cfg.inverse_sigmoid_eps
        self.use_checkpoint = False

    def forward(
        self,
        tgt: Tensor,
        ref_logits: Tensor,
        memory: Tensor,
        padding: Tensor | None,
        spatial_shapes: list[tuple[int, int]],
        level_start_index: Tensor | None,
        valid_ratios: Tensor,
        text: Tensor,
        text_padding: Tensor,
        bbox_embed: nn.Module,
        self_blocked: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run all layers.

        Args:
            tgt: ``[B,Q,d]`` content queries; ref_logits: ``[B,Q,4]`` anchors in logit space;
            memory: ``[B,S,d]``; valid_ratios: ``[B,levels,2]``; text: ``[B,L,d]``;
            text_padding: ``[B,L]`` True=padding; bbox_embed: the shared box MLP, or a
            ``ModuleList`` with one per layer;
            self_blocked: ``[Q,Q]`` bool mask for self-attention (denoising) or None.
        Returns:
            ``(hs, refs)``: per layer the normed output ``[B,Q,d]`` and the reference boxes
            ``[B,Q,4]`` (sigmoid) that entered that layer (undetached after the first layer, DINO's
            "look forward twice").
        """
        ref = ref_logits.sigmoid()
        ratios = torch.cat((valid_ratios, valid_ratios), -1)[:, None].to(tgt.dtype)
        blocked = None if self_blocked is None else self_blocked[None, None]
        hs: list[Tensor] = []
        refs: list[Tensor] = [ref]
        output = tgt
        d = tgt.shape[-1]
        for i, layer in enumerate(self.layers):
            ref_input = ref[:, :, None] * ratios
            query_pos = self.ref_point_head(box_sine_embedding(ref_input[:, :, 0], d // 2).to(tgt.dtype))
            args = (
                output,
                query_pos,
                ref_input,
                memory,
                padding,
                spatial_shapes,
                level_start_index,
                text,
                text_padding,
                blocked,
            )
            if self.use_checkpoint and self.training:
                output = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                output = layer(*args)
            head = bbox_embed[i] if isinstance(bbox_embed, nn.ModuleList) else bbox_embed
            new_ref = (head(output) + inverse_sigmoid(ref, self.eps)).sigmoid()
            refs.append(new_ref)
            ref = new_ref.detach()
            hs.append(self.norm(output))
        return hs, refs[:-1]
