"""mmdetection's checkpoint layout (``{"state_dict": ..., "meta": ...}`` ``.pth``) for Grounding DINO,
MM-Grounding-DINO and LLMDet.

The tensors are gdino's under other names (:func:`route`), with two value changes undone on reading
(:func:`to_official_values`) and redone on writing (:func:`to_mmdet_values`):

- Swin's patch merging: mmdetection gathers each 2x2 patch with ``nn.Unfold``, so the ``4C`` input
  channels of ``downsample.reduction`` / ``downsample.norm`` are ordered channel-major with the
  kernel positions (row, col) = (0,0), (0,1), (1,0), (1,1); the official Swin (and gdino) concatenates
  the positions (0,0), (1,0), (0,1), (1,1) block-major.
- Class-head parameters (``bias``, ``log_scale``) are ``[1]`` tensors in mmdetection, scalars in gdino.

The heads live in ``bbox_head.{cls,reg}_branches.{0..L}``: one per decoder layer, the last (``L``) for
the encoder's query selection. A shared gdino head reads (and writes) every decoder layer's copy.
Training-only leftovers (the denoising label embedding, LLMDet's language-model parts) are skipped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gdino.config import GroundingDINOConfig
from gdino.errors import CheckpointError
from gdino.weights.official import relative_position_indices
from gdino.weights.strict import Route, rename

#: a key only mmdetection checkpoints have
MARKER = "backbone.patch_embed.projection.weight"
BERT = "language_model.language_backbone.body.model"
#: unused here: denoising label embedding, saved derived buffers, LLMDet's language-model training parts
_LEFTOVERS = re.compile(
    r"^(dn_query_generator\.label_embedding\.weight"
    rf"|{re.escape(BERT)}\.embeddings\.(position_ids|token_type_ids)"
    r"|.*relative_position_index|.*num_batches_tracked"
    r"|(lmm|connector|region_connector|ref_point_head)\..*|image_seperate\.weight)$"
)
_HEAD_PARAM = re.compile(r"^bbox_head\.cls_branches\.\d+\.(bias|log_scale)$")
_MERGE = re.compile(r"^backbone\.stages\.\d+\.downsample\.(reduction\.weight|norm\.(weight|bias))$")
#: unfold position p holds official block _ORDER[p] (and the other way round: the map is its own inverse)
_ORDER = [0, 2, 1, 3]

_SWIN_BLOCK = {
    "attn.qkv": "attn.w_msa.qkv",
    "attn.proj": "attn.w_msa.proj",
    "attn.relative_position_bias_table": "attn.w_msa.relative_position_bias_table",
    "mlp.fc1": "ffn.layers.0.0",
    "mlp.fc2": "ffn.layers.1",
    "norm1": "norm1",
    "norm2": "norm2",
}
_ENCODER_LAYER = {
    "norm1": "norms.0",
    "linear1": "ffn.layers.0.0",
    "linear2": "ffn.layers.1",
    "norm2": "norms.1",
    "self_attn": "self_attn",
}
_TEXT_LAYER = {
    "self_attn": "self_attn.attn",
    "norm1": "norms.0",
    "linear1": "ffn.layers.0.0",
    "linear2": "ffn.layers.1",
    "norm2": "norms.1",
}
_DECODER_LAYER = {
    "self_attn": "self_attn.attn",
    "norm2": "norms.0",
    "ca_text": "cross_attn_text.attn",
    "catext_norm": "norms.1",
    "cross_attn": "cross_attn",
    "norm1": "norms.2",
    "linear1": "ffn.layers.0.0",
    "linear2": "ffn.layers.1",
    "norm3": "norms.3",
}
_TOP = {
    "feat_map": "text_feat_map",
    "transformer.level_embed": "level_embed",
    "transformer.tgt_embed": "query_embedding",
    "transformer.enc_output": "memory_trans_fc",
    "transformer.enc_output_norm": "memory_trans_norm",
    "transformer.decoder.norm": "decoder.norm",
    "transformer.decoder.ref_point_head": "decoder.ref_point_head",
}


def is_mmdet(state: Mapping[str, Tensor]) -> bool:
    return MARKER in state


def _sub(rest: str, table: Mapping[str, str]) -> str:
    parts = rest.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return ".".join([table[head], *parts[n:]])
    raise CheckpointError(f"no mmdetection name known for {rest}")


def _reg(index: int, rest: str) -> str:
    """gdino MLP ``layers.{j}.*`` -> mmdetection's ``Sequential`` (Linear, ReLU, ...) ``{2j}.*``."""
    m = re.fullmatch(r"layers\.(\d+)\.(.*)", rest)
    if m is None:
        raise CheckpointError(f"no mmdetection name known for box head parameter {rest}")
    return f"bbox_head.reg_branches.{index}.{2 * int(m.group(1))}.{m.group(2)}"


def route(key: str, config: GroundingDINOConfig) -> Route:
    """mmdetection key(s) holding gdino's ``key``."""
    layers = config.dec_layers
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.*)", key)
    if m:
        return rename(f"backbone.stages.{m.group(1)}.blocks.{m.group(2)}.{_sub(m.group(3), _SWIN_BLOCK)}")
    if key.startswith("backbone.layers."):  # downsample
        return rename(key.replace("backbone.layers.", "backbone.stages.", 1))
    if key.startswith("backbone.patch_embed.proj."):
        return rename(key.replace(".proj.", ".projection.", 1))
    if key.startswith("backbone."):  # patch_embed.norm, norm{i}
        return rename(key)
    if key.startswith("bert."):
        return rename(f"{BERT}.{key[5:]}")
    m = re.fullmatch(r"input_proj\.(\d+)\.([01])\.(.*)", key)
    if m:
        i, part = int(m.group(1)), ("conv", "gn")[int(m.group(2))]
        n = len(config.backbone.out_indices)
        where = f"convs.{i}" if i < n else f"extra_convs.{i - n}"
        return rename(f"neck.{where}.{part}.{m.group(3)}")
    m = re.fullmatch(r"(bbox_embed|class_embed)\.(\d+\.)?(.*)", key)
    if m:
        head, layer, rest = m.groups()
        indices = [int(layer[:-1])] if layer else list(range(layers))
        if head == "bbox_embed":
            keys = tuple(_reg(i, rest) for i in indices)
        else:
            keys = tuple(f"bbox_head.cls_branches.{i}.{rest}" for i in indices)
        return Route(keys, "alias", write_all=True)
    if key.startswith("transformer.enc_out_bbox_embed."):
        return rename(_reg(layers, key[len("transformer.enc_out_bbox_embed.") :]))
    if key.startswith("transformer.enc_out_class_embed."):
        return rename(f"bbox_head.cls_branches.{layers}.{key.rsplit('.', 1)[1]}")
    m = re.fullmatch(r"transformer\.encoder\.(layers|text_layers|fusion_layers)\.(\d+)\.(.*)", key)
    if m:
        kind, index, rest = m.groups()
        if kind == "fusion_layers":
            return rename(f"encoder.fusion_layers.{index}.{rest}")
        return rename(f"encoder.{kind}.{index}.{_sub(rest, _ENCODER_LAYER if kind == 'layers' else _TEXT_LAYER)}")
    m = re.fullmatch(r"transformer\.decoder\.layers\.(\d+)\.(.*)", key)
    if m:
        return rename(f"decoder.layers.{m.group(1)}.{_sub(m.group(2), _DECODER_LAYER)}")
    return rename(_sub(key, _TOP))


def routes(gdino_keys: Iterable[str], config: GroundingDINOConfig) -> dict[str, Route]:
    return {k: route(k, config) for k in gdino_keys}


def allowed_leftover(key: str) -> bool:
    return _LEFTOVERS.match(key) is not None


def _unfold_to_official(t: Tensor) -> Tensor:
    """Last dim ``4C``: channel-major unfold order -> the official block-major 2x2 order."""
    c = t.shape[-1] // 4
    return t.reshape(*t.shape[:-1], c, 4)[..., _ORDER].transpose(-1, -2).reshape(t.shape)


def _official_to_unfold(t: Tensor) -> Tensor:
    c = t.shape[-1] // 4
    return t.reshape(*t.shape[:-1], 4, c)[..., _ORDER, :].transpose(-1, -2).reshape(t.shape)


def to_official_values(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mmdetection tensors -> gdino's values under the same names (see the module docstring)."""
    out = dict(state)
    for key, value in state.items():
        if _MERGE.match(key):
            out[key] = _unfold_to_official(value)
        elif _HEAD_PARAM.match(key) and value.shape == (1,):
            out[key] = value.reshape(())
    return out


def to_mmdet_values(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`to_official_values`."""
    out = dict(state)
    for key, value in state.items():
        if _MERGE.match(key):
            out[key] = _official_to_unfold(value)
        elif _HEAD_PARAM.match(key) and value.dim() == 0:
            out[key] = value.reshape(1)
    return out


def infer_config(
    state: Mapping[str, Tensor], origin: str, presets: Mapping[str, GroundingDINOConfig]
) -> GroundingDINOConfig:
    """The architecture of an mmdetection file without a gdino config: Swin width and feature maps
    from the shapes, the class heads from their parameters, sharing from whether the per-layer
    copies are equal."""
    embed = int(state[MARKER].shape[0])
    convs = len({m.group(1) for k in state if (m := re.match(r"neck\.convs\.(\d+)\.", k))})
    extra = len({m.group(1) for k in state if (m := re.match(r"neck\.extra_convs\.(\d+)\.", k))})
    biased = any(re.fullmatch(r"bbox_head\.cls_branches\.\d+\.bias", k) for k in state)
    learned = any(re.fullmatch(r"bbox_head\.cls_branches\.\d+\.log_scale", k) for k in state)
    matches = [
        c
        for c in presets.values()
        if c.backbone.embed_dim == embed and c.contrastive_bias == biased and not c.calibrated_logits
    ]
    if not matches:
        raise CheckpointError(f"{origin}: no preset has a Swin of embed dim {embed}; pass config=")
    cfg = matches[0]
    layers = len({m.group(1) for k in state if (m := re.match(r"decoder\.layers\.(\d+)\.", k))}) or cfg.dec_layers
    first = 3 - convs + 1  # 3 maps: stages 1-3; 4 maps: stages 0-3
    scale = "learned" if learned else ("sqrt" if biased else "none")
    pooler = any(k.startswith(f"{BERT}.pooler.") for k in state)
    return dataclasses.replace(
        cfg,
        backbone=dataclasses.replace(cfg.backbone, out_indices=tuple(range(first, 4))),
        text=dataclasses.replace(cfg.text, with_pooler=pooler),
        num_feature_levels=convs + extra,
        dec_layers=layers,
        contrastive_scale=scale,
        share_box_head=not _copies_differ(state, r"bbox_head\.reg_branches", layers),
        share_class_head=not _copies_differ(state, r"bbox_head\.cls_branches", layers),
        name=f"mmdet-{cfg.name}",
    )


def _copies_differ(state: Mapping[str, Tensor], prefix: str, layers: int) -> bool:
    pattern = re.compile(rf"^{prefix}\.(\d+)\.(.*)$")
    first: dict[str, Tensor] = {}
    others = []
    for key, value in state.items():
        m = pattern.match(key)
        if m is None or int(m.group(1)) >= layers:  # the last branch is the encoder's
            continue
        if m.group(1) == "0":
            first[m.group(2)] = value
        else:
            others.append((m.group(2), value))
    return any(r not in first or first[r].shape != v.shape or not torch.equal(first[r], v) for r, v in others)


def write_pth(state: Mapping[str, Tensor], config: GroundingDINOConfig, path: str | os.PathLike) -> None:
    """``{"state_dict": mmdetection tensors, "meta": {"gdino_config": ...}}``, atomically."""
    p = Path(path)
    tensors = to_mmdet_values(state)
    for key, value in relative_position_indices(config).items():  # mmdetection saves them
        m = re.fullmatch(r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\..*", key)
        assert m is not None  # the names relative_position_indices writes
        tensors[f"backbone.stages.{m.group(1)}.blocks.{m.group(2)}.attn.w_msa.relative_position_index"] = value
    meta: dict[str, Any] = {"gdino_config": config.to_dict()}
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        torch.save({"state_dict": tensors, "meta": meta}, tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
