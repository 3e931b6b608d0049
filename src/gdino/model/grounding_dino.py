"""Grounding DINO: composition of the backbone, text encoder, feature enhancer, query selection,
decoder and heads. ``forward`` takes tensors and returns tensors; files, strings and devices are
handled by the callers (``gdino.weights``; ``gdino.Detector`` is the predictor that detects and segments)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gdino.config import GroundingDINOConfig
from gdino.errors import CheckpointError
from gdino.model.backbone import SwinTransformer
from gdino.model.decoder import Decoder, DenoisingQueries
from gdino.model.encoder import Encoder
from gdino.model.features import GroundingDINOOutput, ImageFeatures, TextFeatures
from gdino.model.fusion import BiAttentionBlock
from gdino.model.heads import MLP, ContrastiveHead, per_layer
from gdino.model.position import image_position_embedding
from gdino.model.query_selection import select_queries
from gdino.model.text_encoder import build_bert, run_bert
from gdino.ops.boxes import inverse_sigmoid
from gdino.text.tokenize import TokenizedText, tokenize


def valid_ratios(padding: Tensor) -> Tensor:
    """``[B,H,W]`` padding mask -> ``[B,2]`` (w, h) fractions of unpadded columns/rows (row 0, column 0)."""
    _, h, w = padding.shape
    valid_h = (~padding[:, :, 0]).sum(1).float() / h
    valid_w = (~padding[:, 0, :]).sum(1).float() / w
    return torch.stack((valid_w, valid_h), -1)


class Transformer(nn.Module):
    """Container with the official ``transformer.*`` parameter names."""

    def __init__(self, cfg: GroundingDINOConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.level_embed = nn.Parameter(torch.empty(cfg.num_feature_levels, d))
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.tgt_embed = nn.Embedding(cfg.num_queries, d)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        self.enc_out_bbox_embed = MLP(d, d, 4, 3)
        # the query selection's class head (parameters only with contrastive_scale/bias)
        self.enc_out_class_embed = ContrastiveHead(cfg.max_text_len, cfg.contrastive_scale, cfg.contrastive_bias)
        self._init_gamma = cfg.fusion_init_gamma
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if m is not self and hasattr(m, "_reset_parameters"):
                cast(Any, m)._reset_parameters()
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.tgt_embed.weight)
        for fusion in cast(Iterable[BiAttentionBlock], self.encoder.fusion_layers):
            nn.init.constant_(fusion.gamma_v, self._init_gamma)
            nn.init.constant_(fusion.gamma_l, self._init_gamma)
        nn.init.zeros_(cast(nn.Linear, self.enc_out_bbox_embed.layers[-1]).weight)
        nn.init.zeros_(cast(nn.Linear, self.enc_out_bbox_embed.layers[-1]).bias)


class GroundingDINO(nn.Module):
    """The open-set detector. See docs/internals.md for the contracts of every method."""

    def __init__(self, config: GroundingDINOConfig, tokenizer: Any = None) -> None:
        super().__init__()
        cfg = config
        d = cfg.hidden_dim
        self.config = cfg
        self.tokenizer = tokenizer
        self.backbone = SwinTransformer(cfg.backbone)
        self.bert = build_bert(cfg.text)
        self.feat_map = nn.Linear(cfg.text.hidden_size, d)
        channels = cfg.backbone.out_channels
        projs = [nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(32, d)) for c in channels]
        in_ch = channels[-1]
        for _ in range(cfg.num_feature_levels - len(channels)):
            projs.append(nn.Sequential(nn.Conv2d(in_ch, d, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, d)))
            in_ch = d
        self.input_proj = nn.ModuleList(projs)
        self.transformer = Transformer(cfg)
        # box MLP and class head: one shared by all decoder layers, or one per layer (ModuleList)
        self.bbox_embed = _heads(lambda: MLP(d, d, 4, 3), cfg.dec_layers, cfg.share_box_head)
        self.class_embed = _heads(
            lambda: ContrastiveHead(cfg.max_text_len, cfg.contrastive_scale, cfg.contrastive_bias),
            cfg.dec_layers,
            cfg.share_class_head,
        )
        if cfg.calibrated_logits:
            self.logit_bias = nn.Parameter(torch.tensor(-math.log(99.0)))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.feat_map.weight)
        nn.init.zeros_(self.feat_map.bias)
        for proj in cast(Iterable[nn.Sequential], self.input_proj):
            conv = cast(nn.Conv2d, proj[0])
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(cast(Tensor, conv.bias))  # built with bias=True
        for i in range(self.config.dec_layers):
            mlp = cast(MLP, per_layer(self.bbox_embed, i))
            nn.init.zeros_(cast(nn.Linear, mlp.layers[-1]).weight)
            nn.init.zeros_(cast(nn.Linear, mlp.layers[-1]).bias)

    # ------------------------------------------------------------------ gradient checkpointing
    @property
    def use_checkpoint(self) -> bool:
        """Recompute activations in backward (training memory saver) for Swin, encoder and decoder."""
        return bool(self.transformer.encoder.use_checkpoint)

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool) -> None:
        self.transformer.encoder.use_checkpoint = value
        self.transformer.decoder.use_checkpoint = value
        self.backbone.use_checkpoint = value

    # ------------------------------------------------------------------ text side
    def tokenize(self, captions: list[str] | str) -> TokenizedText:
        """Tokenize captions (already normalized) into tensors on the model's device."""
        if self.tokenizer is None:
            raise CheckpointError("this model has no tokenizer attached; load it with gdino.load_model")
        if isinstance(captions, str):
            captions = [captions]
        return tokenize(self.tokenizer, list(captions), self.config.max_text_len).to(self.device)

    def encode_text(self, text: TokenizedText) -> TextFeatures:
        """BERT with sub-sentence masks, then the text projection ``feat_map``; BERT's position ids are
        shifted by ``config.text.position_offset`` (the encoder's text positions are not)."""
        offset = self.config.text.position_offset
        positions = text.position_ids + offset if offset else text.position_ids
        hidden = run_bert(self.bert, text.input_ids, text.token_type_ids, positions, text.self_attention_masks)
        return TextFeatures(
            features=self.feat_map(hidden),
            token_mask=text.attention_mask.bool(),
            self_attention_masks=text.self_attention_masks,
            position_ids=text.position_ids,
        )

    # ------------------------------------------------------------------ image side
    def encode_image(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> ImageFeatures:
        """Swin maps, input projections (+ the extra stride-2 level) and sine positions.

        pixel_values ``[B,3,H,W]`` ImageNet-normalized; pixel_mask ``[B,H,W]`` True on real pixels.
        """
        b, _, h, w = pixel_values.shape
        if pixel_mask is None:
            padding = torch.zeros((b, h, w), dtype=torch.bool, device=pixel_values.device)
        else:
            padding = ~pixel_mask.bool()
        feats = self.backbone(pixel_values)
        maps: list[Tensor] = []
        for proj, feat in zip(self.input_proj, feats):
            maps.append(proj(feat))
        for level in range(len(feats), len(self.input_proj)):
            source = feats[-1] if level == len(feats) else maps[-1]
            maps.append(self.input_proj[level](source))
        paddings = [F.interpolate(padding[None].float(), size=m.shape[-2:]).to(torch.bool)[0] for m in maps]
        d = self.config.hidden_dim
        pos = [
            image_position_embedding(p, d // 2, self.config.pe_temperature).to(m.dtype) for p, m in zip(paddings, maps)
        ]
        return ImageFeatures(maps=maps, padding=paddings, pos=pos)

    # ------------------------------------------------------------------ fusion, selection, decoding
    def forward_features(
        self, image: ImageFeatures, text: TextFeatures, dn: DenoisingQueries | None = None
    ) -> GroundingDINOOutput:
        """Everything after the backbones; ``text`` may hold one prompt for the whole batch."""
        cfg = self.config
        tr = self.transformer
        b = image.maps[0].shape[0]  # not len(): under torch.export a symbolic size must not become an int
        text = text.expand(b)
        shapes = [(m.shape[-2], m.shape[-1]) for m in image.maps]
        src = torch.cat([m.flatten(2).transpose(1, 2) for m in image.maps], 1)
        padding = torch.cat([p.flatten(1) for p in image.padding], 1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + tr.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(image.pos)], 1
        )
        # The level shapes stay Python values: under export they are symbolic, and on a GPU a
        # tensor of them would be read back by every deformable attention (a host sync per layer).
        spatial_shapes: Any = shapes
        level_start_index: Any = None
        ratios = torch.stack([valid_ratios(p) for p in image.padding], 1)
        text_padding = ~text.token_mask
        memory, text_memory = tr.encoder(
            src,
            pos,
            spatial_shapes,
            shapes,
            level_start_index,
            ratios,
            padding,
            text.features,
            text_padding,
            text.self_attention_masks,
            text.position_ids,
        )
        ref_logits, enc_logits, enc_boxes = select_queries(
            memory,
            padding,
            shapes,
            text_memory,
            text.token_mask,
            enc_output=tr.enc_output,
            enc_output_norm=tr.enc_output_norm,
            enc_out_bbox_embed=tr.enc_out_bbox_embed,
            num_queries=cfg.num_queries,
            max_text_len=cfg.max_text_len,
            class_head=tr.enc_out_class_embed,
        )
        content = tr.tgt_embed.weight[: ref_logits.shape[1]][None].expand(b, -1, -1)
        blocked = None
        if dn is not None:
            content = torch.cat((dn.content, content), 1)
            ref_logits = torch.cat((dn.ref_logits, ref_logits), 1)
            blocked = dn.attn_mask
        hs, refs = tr.decoder(
            content,
            ref_logits,
            memory,
            padding,
            spatial_shapes,
            level_start_index,
            ratios,
            text_memory,
            text_padding,
            self.bbox_embed,
            blocked,
        )
        eps = cfg.inverse_sigmoid_eps
        layer_logits = [per_layer(self.class_embed, i)(h, text_memory, text.token_mask) for i, h in enumerate(hs)]
        layer_boxes = [
            (per_layer(self.bbox_embed, i)(h) + inverse_sigmoid(r, eps)).sigmoid()
            for i, (h, r) in enumerate(zip(hs, refs))
        ]
        if cfg.calibrated_logits:  # a monotone map: query selection's ranking is unchanged
            scale = cfg.hidden_dim**-0.5
            layer_logits = [t * scale + self.logit_bias for t in layer_logits]
            enc_logits = enc_logits * scale + self.logit_bias
        dn_logits = dn_boxes = None
        if dn is not None:
            n = dn.num
            dn_logits = [t[:, :n] for t in layer_logits]
            dn_boxes = [t[:, :n] for t in layer_boxes]
            layer_logits = [t[:, n:] for t in layer_logits]
            layer_boxes = [t[:, n:] for t in layer_boxes]
        text_mask = torch.zeros((b, cfg.max_text_len), dtype=torch.bool, device=src.device)
        length = min(text.token_mask.shape[1], cfg.max_text_len)
        text_mask[:, :length] = text.token_mask[:, :length]
        return GroundingDINOOutput(
            logits=layer_logits[-1],
            boxes=layer_boxes[-1],
            layer_logits=layer_logits,
            layer_boxes=layer_boxes,
            enc_logits=enc_logits,
            enc_boxes=enc_boxes,
            text_mask=text_mask,
            dn_logits=dn_logits,
            dn_boxes=dn_boxes,
        )

    def forward(
        self,
        pixel_values: Tensor,
        text: TokenizedText,
        pixel_mask: Tensor | None = None,
        dn: DenoisingQueries | None = None,
    ) -> GroundingDINOOutput:
        """Raw contract: ``.logits`` [B,Q,256] (-inf at padding columns), ``.boxes`` [B,Q,4] cxcywh."""
        return self.forward_features(self.encode_image(pixel_values, pixel_mask), self.encode_text(text), dn)

    # ------------------------------------------------------------------ conveniences
    @property
    def device(self) -> torch.device:
        return self.feat_map.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feat_map.weight.dtype

    def num_parameters(self) -> int:
        """Unique parameters (a shared box head counts once)."""
        return sum(p.numel() for p in self.parameters())


def _heads(make: Any, layers: int, shared: bool) -> nn.Module:
    """One module (``shared``) or a ``ModuleList`` of ``layers`` independent ones."""
    return make() if shared else nn.ModuleList(make() for _ in range(layers))


def build_model(config: GroundingDINOConfig, tokenizer: Any = None) -> GroundingDINO:
    """A randomly initialized model in eval mode (weights come from ``gdino.load_model``)."""
    return GroundingDINO(config, tokenizer).eval()
