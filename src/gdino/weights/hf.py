"""The Hugging Face layout: a folder with ``config.json`` + ``model.safetensors`` (+ tokenizer files),
as written by transformers' ``GroundingDinoForObjectDetection.save_pretrained`` (and
``MMGroundingDinoForObjectDetection``'s, for MM-Grounding-DINO and LLMDet: per-layer ``class_embed.{i}.bias``
and ``bbox_embed.{i}.*``, and the query selection's ``model.encoder_output_class_embed.bias``).

Key names of transformers 4.x (``attention.self.query``...) and of 5.x's in-memory Swin
(``swin.encoder...attention.q_proj``...) are both read; files are written in the 4.x layout, which
transformers 5 also writes and reads. Fused q/k/v tensors are split in row thirds.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from gdino.config import GroundingDINOConfig
from gdino.core.files import atomic_path, write_json
from gdino.errors import CheckpointError, first_line
from gdino.weights.hf_config import PREPROCESSOR, config_to_hf
from gdino.weights.official import read_pth, relative_position_indices
from gdino.weights.strict import Route, contiguous, rename

SWIN = "model.backbone.conv_encoder.model"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

_LEFTOVERS = re.compile(
    r"^(.*relative_position_index"
    r"|model\.text_backbone\.embeddings\.(position_ids|token_type_ids)"
    r"|model\.backbone\.conv_encoder\.model\.(swin\.)?layernorm\.(weight|bias)"
    r"|.*num_batches_tracked)$"
)

# gdino (official) sub-names -> HF sub-names, per module kind
_ENCODER_LAYER = {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm", "linear1": "fc1", "linear2": "fc2"}
_TEXT_LAYER = {"norm1": "layer_norm_before", "norm2": "layer_norm_after", "linear1": "fc1", "linear2": "fc2"}
_FUSION = {
    "gamma_v": "vision_param",
    "gamma_l": "text_param",
    "layer_norm_v": "layer_norm_vision",
    "layer_norm_l": "layer_norm_text",
    "attn.v_proj": "attn.vision_proj",
    "attn.l_proj": "attn.text_proj",
    "attn.values_v_proj": "attn.values_vision_proj",
    "attn.values_l_proj": "attn.values_text_proj",
    "attn.out_v_proj": "attn.out_vision_proj",
    "attn.out_l_proj": "attn.out_text_proj",
}
_DECODER_LAYER = {
    "cross_attn": "encoder_attn",
    "norm1": "encoder_attn_layer_norm",
    "ca_text": "encoder_attn_text",
    "catext_norm": "encoder_attn_text_layer_norm",
    "self_attn": "self_attn",
    "norm2": "self_attn_layer_norm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm3": "final_layer_norm",
}
_TOP = {
    "bert": "model.text_backbone",
    "feat_map": "model.text_projection",
    "input_proj": "model.input_proj_vision",
    "transformer.level_embed": "model.level_embed",
    "transformer.tgt_embed": "model.query_position_embeddings",
    "transformer.enc_output": "model.enc_output",
    "transformer.enc_output_norm": "model.enc_output_norm",
    "transformer.enc_out_bbox_embed": "model.encoder_output_bbox_embed",
    "transformer.enc_out_class_embed": "model.encoder_output_class_embed",
    "transformer.decoder.norm": "model.decoder.layer_norm",
    "transformer.decoder.ref_point_head": "model.decoder.reference_points_head",
}


def _sub(rest: str, table: Mapping[str, str]) -> str:
    """Rename the longest matching dotted prefix of ``rest`` through ``table``."""
    parts = rest.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return ".".join([table[head], *parts[n:]])
    return rest


def _fused(prefix: str, rest: str, names: tuple[str, str, str] = ("query", "key", "value")) -> Route | None:
    """``in_proj_weight``/``in_proj_bias`` -> the three q/k/v keys under ``prefix``."""
    m = re.fullmatch(r"(.*)in_proj_(weight|bias)", rest)
    if m is None:
        return None
    return Route(tuple(f"{prefix}{m.group(1)}{n}.{m.group(2)}" for n in names), "cat")


def _swin_route(rest: str, v5: bool) -> Route:
    """gdino ``backbone.<rest>`` -> HF Swin key(s) (4.x or 5.x names)."""
    base = f"{SWIN}.swin" if v5 else SWIN
    m = re.fullmatch(r"norm(\d+)\.(weight|bias)", rest)
    if m:
        return rename(f"{SWIN}.hidden_states_norms.stage{int(m.group(1)) + 1}.{m.group(2)}")
    if rest.startswith("patch_embed."):
        return rename(
            f"{base}.embeddings."
            + rest.replace("patch_embed.proj", "patch_embeddings.projection").removeprefix("patch_embed.")
        )
    m = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)", rest)
    if m is None:  # layers.{s}.downsample.*
        return rename(f"{base}.encoder.{rest}")
    block = f"{base}.encoder.layers.{m.group(1)}.blocks.{m.group(2)}."
    leaf = m.group(3)
    if leaf.startswith("attn.qkv."):
        names = ("q_proj", "k_proj", "v_proj") if v5 else ("self.query", "self.key", "self.value")
        return Route(tuple(f"{block}attention.{n}.{leaf.split('.')[-1]}" for n in names), "cat")
    table = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj" if v5 else "attention.output.dense",
        "attn.relative_position_bias_table": (
            "attention.relative_position_bias.relative_position_bias_table"
            if v5
            else "attention.self.relative_position_bias_table"
        ),
        "mlp.fc1": "mlp.fc1" if v5 else "intermediate.dense",
        "mlp.fc2": "mlp.fc2" if v5 else "output.dense",
    }
    return rename(block + _sub(leaf, table))


def route(key: str, dec_layers: int, v5: bool = False) -> Route:
    """HF key(s) holding gdino's ``key``."""
    if key.startswith("backbone."):
        return _swin_route(key[len("backbone.") :], v5)
    m = re.fullmatch(r"(bbox_embed|class_embed)\.(\d+\.)?(.*)", key)
    if m:  # a head shared by all decoder layers (every copy must be equal), or layer i's own
        head, layer, rest = m.groups()
        layers = [int(layer[:-1])] if layer else list(range(dec_layers))
        copies = [f"{head}.{n}.{rest}" for n in layers] + [f"model.decoder.{head}.{n}.{rest}" for n in layers]
        return Route(tuple(copies), "alias")
    m = re.fullmatch(r"transformer\.encoder\.(layers|text_layers|fusion_layers)\.(\d+)\.(.*)", key)
    if m:
        kind, i, rest = m.groups()
        if kind == "layers":
            return rename(f"model.encoder.layers.{i}.deformable_layer.{_sub(rest, _ENCODER_LAYER)}")
        if kind == "text_layers":
            prefix = f"model.encoder.layers.{i}.text_enhancer_layer."
            return _fused(prefix, rest) or rename(prefix + _sub(rest, _TEXT_LAYER))
        return rename(f"model.encoder.layers.{i}.fusion_layer.{_sub(rest, _FUSION)}")
    m = re.fullmatch(r"transformer\.decoder\.layers\.(\d+)\.(.*)", key)
    if m:
        i, rest = m.groups()
        prefix = f"model.decoder.layers.{i}."
        renamed = _sub(rest, _DECODER_LAYER)
        return _fused(prefix, renamed) or rename(prefix + renamed)
    renamed = _sub(key, _TOP)
    if renamed == key:
        raise CheckpointError(f"no Hugging Face name known for gdino parameter {key}")
    return rename(renamed)


def routes(gdino_keys: Iterable[str], config: GroundingDINOConfig, v5: bool = False) -> dict[str, Route]:
    return {k: route(k, config.dec_layers, v5) for k in gdino_keys}


def uses_v5_names(state: Mapping[str, Tensor]) -> bool:
    """True when the Swin keys are transformers 5's in-memory names (``...model.swin.encoder...``)."""
    return any(k.startswith(f"{SWIN}.swin.encoder.") or k.startswith(f"{SWIN}.swin.embeddings.") for k in state)


def allowed_leftover(key: str) -> bool:
    return _LEFTOVERS.match(key) is not None


def relative_position_buffers(config: GroundingDINOConfig) -> dict[str, Tensor]:
    """Swin's index buffers under transformers 4.x names (4.x expects them in the file; 5.x ignores them)."""
    out = {}
    for key, value in relative_position_indices(config).items():
        match = re.fullmatch(r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\..*", key)
        if match is None:
            raise ValueError(f"unexpected Swin index buffer name {key}")
        s, b = match.groups()
        out[f"{SWIN}.encoder.layers.{s}.blocks.{b}.attention.self.relative_position_index"] = value
    return out


def has_pooler(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("model.text_backbone.pooler.") for k in state)


def layers_differ(state: Mapping[str, Tensor], head: str) -> bool:
    """Whether the file holds per-layer copies of ``head`` (``bbox_embed`` / ``class_embed``) that
    differ from layer 0's: then the layers cannot share one head."""
    pattern = re.compile(rf"^(model\.decoder\.)?{head}\.(\d+)\.(.*)$")
    first: dict[str, Tensor] = {}
    others: list[tuple[str, Tensor]] = []
    for key, value in state.items():
        m = pattern.match(key)
        if m:
            if m.group(2) == "0":
                first[m.group(3)] = value
            else:
                others.append((m.group(3), value))
    return any(
        rest not in first or first[rest].shape != v.shape or not torch.equal(first[rest], v) for rest, v in others
    )


# ---------------------------------------------------------------------------------------- files


def find_weights(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_folder(folder: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, config dict)`` of an HF-layout folder.

    Raises:
        CheckpointError: no config.json, no weights file, or an unreadable one.
    """
    root = Path(folder)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        inside = sorted(q.name for q in root.iterdir() if q.suffix in {".pth", ".pt", ".safetensors"})[:3]
        hint = f"; pass one of its files instead ({', '.join(inside)})" if inside else ""
        raise CheckpointError(f"{root} has no config.json: not a Hugging Face model folder{hint}")
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {cfg_path}: {e}") from None
    weights = find_weights(root)
    if weights is None:
        raise CheckpointError(f"{root} has no weights ({', '.join(WEIGHT_FILES)})")
    if weights.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot read {weights}: {e}") from None
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(read_safetensors(root / shard))
    elif weights.suffix == ".bin":
        state, _ = read_pth(weights)
    else:
        state = read_safetensors(weights)
    return state, data


def read_safetensors(path: Path) -> dict[str, Tensor]:

    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError / OSError
        raise CheckpointError(f"cannot read {path} (truncated or not a safetensors file): {first_line(e)}") from None


def write_folder(
    state: Mapping[str, Tensor], config: GroundingDINOConfig, folder: str | os.PathLike, tokenizer: Any = None
) -> None:
    """Write config.json, model.safetensors (4.x names), preprocessor and tokenizer files.

    BERT's pooler, when the model has one, is kept (transformers reports it as unused); Swin's
    index buffers are added for transformers 4.x.
    """

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    tensors = contiguous(state)
    tensors.update(relative_position_buffers(config))
    with atomic_path(root / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})

    write_json(root / "config.json", config_to_hf(config), sort_keys=True)
    write_json(root / "preprocessor_config.json", PREPROCESSOR, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(root))
