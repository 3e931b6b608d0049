"""Typed, frozen model configurations and named presets.

Every field is read by the model builder; checkpoints carry their config (``to_dict``/``from_dict``).
Presets: ``swin-t`` (groundingdino_swint_ogc), ``swin-b`` (groundingdino_swinb_cogcoor), ``tiny`` and
``tiny-b`` (fast random-init test models), ``small-minilm`` (a Swin-T-shaped detector with the 6-layer
MiniLM text encoder and phrase positions from 1, for small trained models), and the MM-Grounding-DINO / LLMDet architectures
``mm-grounding-dino-{tiny,base,large}`` and ``llmdet-{tiny,base,large}`` (Swin-T/B/L; the same
detector with scaled, biased class heads and per-layer class and box heads), plus ``tiny-mm`` (the
``tiny`` test model with that head variant).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gdino.errors import GdinoError


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer image backbone (mmdet-style, as in the official code)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    patch_size: int = 4
    out_indices: tuple[int, ...] = (1, 2, 3)
    drop_path_rate: float = 0.2

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of the returned stage maps (stage i has ``embed_dim * 2**i``)."""
        return tuple(self.embed_dim * 2**i for i in self.out_indices)


@dataclass(frozen=True)
class TextEncoderConfig:
    """BERT text encoder shape (bert-base-uncased by default); mirrors transformers' BertConfig."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    with_pooler: bool = True
    #: added to every token's BERT position id. 0 is the original: each phrase restarts at position
    #: 0, the [CLS] slot. A frozen sentence-embedding encoder (MiniLM) maps its position-0 token to
    #: nearly the same vector whatever the word (cosine 0.998 between "red" and "green" opening
    #: "red circle" / "green circle"), so the first word of every phrase is lost; 1 keeps it.
    position_offset: int = 0


@dataclass(frozen=True)
class GroundingDINOConfig:
    """The whole detector. Defaults are the official Swin-T OGC values."""

    backbone: SwinConfig = field(default_factory=SwinConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    hidden_dim: int = 256
    num_queries: int = 900
    num_feature_levels: int = 4
    enc_layers: int = 6
    dec_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 2048
    enc_n_points: int = 4
    dec_n_points: int = 4
    max_text_len: int = 256
    pe_temperature: float = 20.0
    inverse_sigmoid_eps: float = 1e-3
    # training from scratch: token logits scaled by 1/sqrt(hidden_dim) plus a learned bias starting
    # at the focal-loss prior (-log(99)); off for the released checkpoints (plain dot product)
    calibrated_logits: bool = False
    # class heads (mmdetection's ContrastiveEmbed): dot products scaled "none" (the original), "sqrt"
    # (/ sqrt(hidden_dim): MM-Grounding-DINO, LLMDet) or "learned" (* exp(log_scale)), plus a learned
    # scalar bias per head when contrastive_bias; the encoder's query selection has its own head
    contrastive_scale: str = "none"
    contrastive_bias: bool = False
    # one class head and one box MLP for all decoder layers (the original) or one per layer (MM-GDINO)
    share_class_head: bool = True
    share_box_head: bool = True
    fusion_init_gamma: float = 1e-4
    fusion_droppath: float = 0.1
    dropout: float = 0.0
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.contrastive_scale not in ("none", "sqrt", "learned"):
            raise GdinoError(f"contrastive_scale must be none, sqrt or learned, got {self.contrastive_scale!r}")
        if self.calibrated_logits and (self.contrastive_bias or self.contrastive_scale != "none"):
            raise GdinoError(
                "calibrated_logits already scales and shifts the logits; "
                "do not combine it with contrastive_scale / contrastive_bias"
            )

    @property
    def text_nheads(self) -> int:
        """Heads of the text enhancer self-attention (official: nheads // 2)."""
        return self.nheads // 2

    @property
    def text_ffn_dim(self) -> int:
        """FFN width of the text enhancer (official: dim_feedforward // 2)."""
        return self.dim_feedforward // 2

    @property
    def fusion_dim(self) -> int:
        """Inner width of the image<->text fusion attention (official: dim_feedforward // 2)."""
        return self.dim_feedforward // 2

    @property
    def fusion_nheads(self) -> int:
        """Heads of the image<->text fusion attention (official: nheads // 2)."""
        return self.nheads // 2

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundingDINOConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        data = dict(data)
        backbone = _build(SwinConfig, data.pop("backbone", {}), "backbone")
        text = _build(TextEncoderConfig, data.pop("text", {}), "text")
        cfg = _build(cls, data, "model", backbone=backbone, text=text)
        return cfg


def _build(kind: type, values: dict[str, Any], where: str, **extra: Any) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise GdinoError(f"unknown {where} config keys: {', '.join(unknown)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**fixed, **extra)


SWIN_T = SwinConfig()
SWIN_B = SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12)
SWIN_L = SwinConfig(
    embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, out_indices=(0, 1, 2, 3)
)
TINY_SWIN = SwinConfig(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7)
TINY_TEXT = TextEncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
MINILM_TEXT = TextEncoderConfig(
    hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, position_offset=1
)

#: MM-Grounding-DINO's head variant (mmdetection ``contrastive_cfg=dict(log_scale="auto", bias=True)``,
#: ``share_pred_layer=False``); its BERT has no pooler (``add_pooling_layer=False``)
MM_HEADS: dict[str, Any] = {
    "contrastive_scale": "sqrt",
    "contrastive_bias": True,
    "share_class_head": False,
    "share_box_head": False,
    "text": TextEncoderConfig(with_pooler=False),
}


def _mm(name: str, backbone: SwinConfig) -> GroundingDINOConfig:
    """A released MM-Grounding-DINO / LLMDet size: Swin-L adds its stride-4 map (5 feature levels)."""
    return GroundingDINOConfig(
        backbone=backbone, num_feature_levels=len(backbone.out_indices) + 1, name=name, **MM_HEADS
    )


PRESETS: dict[str, GroundingDINOConfig] = {
    "swin-t": GroundingDINOConfig(backbone=SWIN_T, name="swin-t"),
    "swin-b": GroundingDINOConfig(backbone=SWIN_B, name="swin-b"),
    "tiny": GroundingDINOConfig(
        backbone=TINY_SWIN,
        text=TINY_TEXT,
        hidden_dim=64,
        num_queries=50,
        enc_layers=2,
        dec_layers=2,
        nheads=4,
        dim_feedforward=128,
        name="tiny",
    ),
    "small-minilm": GroundingDINOConfig(
        backbone=TINY_SWIN,
        text=MINILM_TEXT,
        hidden_dim=128,
        num_queries=100,
        enc_layers=2,
        dec_layers=3,
        nheads=8,
        dim_feedforward=512,
        calibrated_logits=True,
        name="small-minilm",
    ),
    **{
        f"{family}-{size}": _mm(f"{family}-{size}", bb)
        for family in ("mm-grounding-dino", "llmdet")
        for size, bb in (("tiny", SWIN_T), ("base", SWIN_B), ("large", SWIN_L))
    },
}
PRESETS["tiny-mm"] = dataclasses.replace(
    PRESETS["tiny"], **{**MM_HEADS, "text": dataclasses.replace(TINY_TEXT, with_pooler=False)}, name="tiny-mm"
)


def get_preset(name: str) -> GroundingDINOConfig:
    """Return a named preset config; unknown names raise a one-line error listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise GdinoError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None
