"""transformers ``GroundingDinoConfig`` / ``MMGroundingDinoConfig`` (``config.json``) <-> gdino's
:class:`GroundingDINOConfig`.

``mm-grounding-dino`` (MM-Grounding-DINO and LLMDet) is the same detector with class heads that
divide by sqrt(d_model) and add a learned bias, and optionally per-layer class and box heads
(``decoder_cls_embed_share`` / ``decoder_bbox_embed_share``). Configs written by transformers 4.x
lack those two keys and their heads are always per layer; gdino then reads the sharing from the
weights (per-layer copies that differ from layer 0's cannot be shared).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gdino.config import GroundingDINOConfig, SwinConfig, TextEncoderConfig
from gdino.errors import CheckpointError

#: transformers options that gdino implements in one way only: written as they are, and a config
#: with another value is refused.
FIXED_OPTIONS: dict[str, Any] = {
    "two_stage": True,
    "embedding_init_target": True,
    "query_dim": 4,
    "two_stage_bbox_embed_share": False,
    "position_embedding_type": "sine",
    "activation_function": "relu",
    "layer_norm_eps": 1e-5,
}


#: the model types read, and whether their class heads are MM-Grounding-DINO's (scaled and biased)
MODEL_TYPES = {"grounding-dino": False, "mm-grounding-dino": True}


def config_from_hf(
    data: Mapping[str, Any],
    origin: str,
    with_pooler: bool = False,
    per_layer_boxes: bool = False,
    per_layer_classes: bool = False,
) -> GroundingDINOConfig:
    """gdino config from a transformers ``GroundingDinoConfig`` / ``MMGroundingDinoConfig`` dict.

    ``with_pooler``: whether the weights carry BERT's (unused) pooler, which transformers omits.
    ``per_layer_boxes`` / ``per_layer_classes``: whether the weights hold per-layer heads that
    differ (used when the config does not say whether the heads are shared).

    Raises:
        CheckpointError: another model type, or options gdino does not implement.
    """
    model_type = data.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{origin} is a {model_type!r} model, not grounding-dino or mm-grounding-dino")
    mm = MODEL_TYPES[str(model_type)]
    bb = dict(data.get("backbone_config") or {})
    tx = dict(data.get("text_config") or {})
    problems = []
    if data.get("use_timm_backbone") or data.get("backbone"):
        problems.append("timm/named backbone")
    if bb.get("model_type", "swin") != "swin":
        problems.append(f"backbone {bb.get('model_type')}")
    if tx.get("model_type", "bert") != "bert":
        problems.append(f"text encoder {tx.get('model_type')}")
    problems += [f"{k}={data[k]!r}" for k, v in FIXED_OPTIONS.items() if k in data and data[k] != v]
    if bb.get("use_absolute_embeddings") or bb.get("qkv_bias", True) is not True:
        problems.append("Swin absolute embeddings / no qkv bias")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if data.get(a, 8 if "heads" in a else 2048) != data.get(b, 8 if "heads" in b else 2048):
            problems.append(f"{a} != {b}")
    if problems:
        raise CheckpointError(f"{origin}: unsupported Grounding DINO options: {', '.join(problems)}")
    extra = dict(data.get("gdino") or {})
    swin_defaults = SwinConfig()
    backbone = SwinConfig(
        embed_dim=bb.get("embed_dim", swin_defaults.embed_dim),
        depths=tuple(bb.get("depths", swin_defaults.depths)),
        num_heads=tuple(bb.get("num_heads", swin_defaults.num_heads)),
        window_size=bb.get("window_size", swin_defaults.window_size),
        mlp_ratio=float(bb.get("mlp_ratio", swin_defaults.mlp_ratio)),
        patch_size=bb.get("patch_size", swin_defaults.patch_size),
        out_indices=tuple(i - 1 for i in bb.get("out_indices") or (2, 3, 4)),
        drop_path_rate=bb.get("drop_path_rate", 0.1),
    )
    td = TextEncoderConfig()
    text = TextEncoderConfig(
        **{
            f: tx.get(f, getattr(td, f))
            for f in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
                "type_vocab_size",
                "layer_norm_eps",
                "hidden_act",
                "pad_token_id",
            )
        },
        with_pooler=with_pooler,
    )
    gd = GroundingDINOConfig()
    heads: dict[str, Any] = {
        "share_box_head": bool(data.get("decoder_bbox_embed_share", not (mm and per_layer_boxes))),
        "share_class_head": bool(data.get("decoder_cls_embed_share", not (mm and per_layer_classes))) if mm else True,
    }
    if mm:
        heads.update(contrastive_scale="sqrt", contrastive_bias=True)
    return GroundingDINOConfig(
        **heads,
        backbone=backbone,
        text=text,
        hidden_dim=data.get("d_model", 256),
        num_queries=data.get("num_queries", 900),
        num_feature_levels=data.get("num_feature_levels", 4),
        enc_layers=data.get("encoder_layers", 6),
        dec_layers=data.get("decoder_layers", 6),
        nheads=data.get("encoder_attention_heads", 8),
        dim_feedforward=data.get("encoder_ffn_dim", 2048),
        enc_n_points=data.get("encoder_n_points", 4),
        dec_n_points=data.get("decoder_n_points", 4),
        max_text_len=data.get("max_text_len", 256),
        pe_temperature=float(data.get("positional_embedding_temperature", 20)),
        inverse_sigmoid_eps=float(extra.get("inverse_sigmoid_eps", gd.inverse_sigmoid_eps)),
        fusion_init_gamma=float(extra.get("fusion_init_gamma", gd.fusion_init_gamma)),
        fusion_droppath=float(data.get("fusion_droppath", 0.1)),
        dropout=float(extra.get("dropout", data.get("dropout", 0.0))),
        name=str(extra.get("name", "mm-hf" if mm else "hf")),
    )


def config_to_hf(cfg: GroundingDINOConfig) -> dict[str, Any]:
    """``config.json`` contents for transformers' ``GroundingDinoForObjectDetection``.

    gdino-only fields go under ``"gdino"`` (transformers keeps unknown keys), so a round trip
    through this layout gives back the same gdino config. The MM-Grounding-DINO head variant is
    written as ``mm-grounding-dino`` (``MMGroundingDinoForObjectDetection``).

    Raises:
        CheckpointError: class heads transformers has no model for (a learned scale, a bias
            without the sqrt scale, calibrated logits) or shifted BERT positions.
    """
    bb, tx = cfg.backbone, cfg.text
    mm = cfg.contrastive_bias
    if (cfg.contrastive_scale, cfg.contrastive_bias) not in (("none", False), ("sqrt", True)) or cfg.calibrated_logits:
        raise CheckpointError(
            f"{cfg.name}: class heads with contrastive_scale={cfg.contrastive_scale!r}, "
            f"contrastive_bias={cfg.contrastive_bias}, calibrated_logits={cfg.calibrated_logits} have no "
            "Hugging Face model (only the original and MM-Grounding-DINO's); save as gdino .safetensors"
        )
    if tx.position_offset:
        raise CheckpointError(
            f"{cfg.name}: text.position_offset={tx.position_offset} (shifted BERT positions) has no Hugging Face "
            "model; save as gdino .safetensors"
        )
    if not mm and not cfg.share_class_head:
        raise CheckpointError(
            f"{cfg.name}: per-layer class heads need the MM-Grounding-DINO head variant in the HF layout"
        )
    stages = len(bb.depths)
    return {
        "architectures": ["MMGroundingDinoForObjectDetection" if mm else "GroundingDinoForObjectDetection"],
        "model_type": "mm-grounding-dino" if mm else "grounding-dino",
        "backbone_config": {
            "model_type": "swin",
            "embed_dim": bb.embed_dim,
            "depths": list(bb.depths),
            "num_heads": list(bb.num_heads),
            "num_layers": stages,
            "window_size": bb.window_size,
            "mlp_ratio": bb.mlp_ratio,
            "patch_size": bb.patch_size,
            "image_size": 224,
            "hidden_size": bb.embed_dim * 2 ** (stages - 1),
            "drop_path_rate": bb.drop_path_rate,
            "out_indices": [i + 1 for i in bb.out_indices],
            "out_features": [f"stage{i + 1}" for i in bb.out_indices],
            "stage_names": ["stem"] + [f"stage{i + 1}" for i in range(stages)],
        },
        "text_config": {
            "model_type": "bert",
            **{
                f: getattr(tx, f)
                for f in (
                    "vocab_size",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                    "max_position_embeddings",
                    "type_vocab_size",
                    "layer_norm_eps",
                    "hidden_act",
                    "pad_token_id",
                )
            },
        },
        "d_model": cfg.hidden_dim,
        "num_queries": cfg.num_queries,
        "num_feature_levels": cfg.num_feature_levels,
        "encoder_layers": cfg.enc_layers,
        "decoder_layers": cfg.dec_layers,
        "encoder_attention_heads": cfg.nheads,
        "decoder_attention_heads": cfg.nheads,
        "encoder_ffn_dim": cfg.dim_feedforward,
        "decoder_ffn_dim": cfg.dim_feedforward,
        "encoder_n_points": cfg.enc_n_points,
        "decoder_n_points": cfg.dec_n_points,
        "max_text_len": cfg.max_text_len,
        "positional_embedding_temperature": _number(cfg.pe_temperature),
        "fusion_droppath": cfg.fusion_droppath,
        "dropout": cfg.dropout,
        **FIXED_OPTIONS,
        "decoder_bbox_embed_share": cfg.share_box_head,
        **({"decoder_cls_embed_share": cfg.share_class_head} if mm else {}),
        "gdino": {
            "name": cfg.name,
            "inverse_sigmoid_eps": cfg.inverse_sigmoid_eps,
            "fusion_init_gamma": cfg.fusion_init_gamma,
            "dropout": cfg.dropout,
        },
    }


def _number(x: float) -> int | float:
    """Integral floats as ints (transformers 5 validates this field as int)."""
    return int(x) if float(x).is_integer() else x


#: ``preprocessor_config.json``: the official preprocessing (shorter side 800, longer <= 1333)
PREPROCESSOR = {
    "image_processor_type": "GroundingDinoImageProcessor",
    "processor_class": "GroundingDinoProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 800, "longest_edge": 1333},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_pad": True,
    "format": "coco_detection",
}
