"""The official checkpoint layout (``groundingdino_swint_ogc.pth``, ``groundingdino_swinb_cogcoor.pth``).

gdino's names are the official ones except ``backbone.0.*`` -> ``backbone.*`` and the shared box
head, which the official file repeats under ``bbox_embed.{0..5}`` and
``transformer.decoder.bbox_embed.{0..5}`` and gdino keeps once as ``bbox_embed``. Files are read
only with ``torch.load(..., weights_only=True)``: a pickle that carries code is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gdino.config import GroundingDINOConfig
from gdino.core.files import atomic_path
from gdino.errors import CheckpointError, first_line
from gdino.weights.strict import Route, rename

#: source keys known to be unused: the training-time DN label embedding, persisted BERT buffers,
#: Swin's saved relative position index (recomputed), BatchNorm counters
_LEFTOVERS = re.compile(
    r"^(label_enc\.weight"
    r"|bert\.embeddings\.(position_ids|token_type_ids)"
    r"|backbone\.(0\.)?layers\.\d+\.blocks\.\d+\.attn\.relative_position_index"
    r"|.*num_batches_tracked)$"
)
_BACKBONE_KEY = "backbone.0.patch_embed.proj.weight"
_NATIVE_BACKBONE_KEY = "backbone.patch_embed.proj.weight"


def read_pth(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """``(state_dict, config dict or None)`` of a ``.pth`` file, loaded with ``weights_only=True``.

    Accepts ``{"model": state_dict, ...}`` or a bare state dict, with or without a ``module.`` prefix.

    Raises:
        CheckpointError: missing, truncated or unsafe file, or no state dict inside.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        with _safe_globals():
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = first_line(e)
        if "weights only" in text.lower() or "weights_only" in text.lower():
            found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(e))
            what = f"it references {found.group(1)}" if found else "possibly code"
            raise CheckpointError(
                f"refusing to load {p}: it holds pickled objects other than tensors ({what}); if you trust it, "
                "re-save only its state dict: torch.save(torch.load(f, weights_only=False)['model'], g)"
            ) from None
        raise CheckpointError(f"cannot read {p} (truncated or not a PyTorch checkpoint): {text}") from None
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        config = obj.get("config") if isinstance(obj.get("config"), dict) else None
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # mmdetection / Lightning
        meta = obj.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("gdino_config"), dict):
            config = meta["gdino_config"]
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} holds no state dict (expected {{'model': state_dict}} or a dict of tensors)")
    state = {_strip_module(str(k)): v for k, v in obj.items()}
    return state, config


def is_native(state: Mapping[str, Tensor]) -> bool:
    """True for gdino-named state dicts (``backbone.patch_embed...``, e.g. training checkpoints)."""
    return _NATIVE_BACKBONE_KEY in state


def check_architecture(state: Mapping[str, Tensor], origin: str) -> None:
    """Raise unless the keys look like a Grounding DINO with a Swin backbone."""
    if _BACKBONE_KEY in state or _NATIVE_BACKBONE_KEY in state:
        if "feat_map.weight" in state and any(k.startswith("transformer.") for k in state):
            return
    sample = ", ".join(sorted(state)[:3])
    raise CheckpointError(
        f"{origin} is not a Grounding DINO (Swin) checkpoint: no {_BACKBONE_KEY} / feat_map / transformer.* keys "
        f"(it has {sample}, ...)"
    )


def backbone_embed_dim(state: Mapping[str, Tensor]) -> int:
    """Swin embedding width (96 Swin-T, 128 Swin-B) from the patch embedding."""
    w = state.get(_BACKBONE_KEY, state.get(_NATIVE_BACKBONE_KEY))
    if w is None:
        raise CheckpointError(f"no {_BACKBONE_KEY} or {_NATIVE_BACKBONE_KEY}: not a Swin Grounding DINO checkpoint")
    return int(w.shape[0])


def has_pooler(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("bert.pooler.") for k in state)


def routes(gdino_keys: Iterable[str], config: GroundingDINOConfig, native: bool = False) -> dict[str, Route]:
    """Official name(s) of every gdino key (identity for gdino-named files)."""
    out: dict[str, Route] = {}
    for key in gdino_keys:
        if native:
            out[key] = rename(key)
        elif key.startswith("backbone."):
            out[key] = rename("backbone.0." + key[len("backbone.") :])
        elif key.startswith("bbox_embed."):
            rest = key[len("bbox_embed.") :]
            copies = [f"bbox_embed.{n}.{rest}" for n in range(config.dec_layers)]
            copies += [f"transformer.decoder.bbox_embed.{n}.{rest}" for n in range(config.dec_layers)]
            out[key] = Route(tuple(copies), "alias", write_all=True)
        else:
            out[key] = rename(key)
    return out


def allowed_leftover(key: str) -> bool:
    return _LEFTOVERS.match(key) is not None


def relative_position_indices(config: GroundingDINOConfig) -> dict[str, Tensor]:
    """The ``relative_position_index`` buffers the official Swin saves (one per block)."""
    ws = config.backbone.window_size
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    index = rel[..., 0] * (2 * ws - 1) + rel[..., 1]
    return {
        f"backbone.0.layers.{s}.blocks.{b}.attn.relative_position_index": index.clone()
        for s, depth in enumerate(config.backbone.depths)
        for b in range(depth)
    }


def write_pth(state: Mapping[str, Tensor], config: GroundingDINOConfig, path: str | os.PathLike) -> None:
    """Write ``{"model": official state dict, "config": gdino config}`` atomically."""
    p = Path(path)
    model = dict(state)
    model.update(relative_position_indices(config))
    with atomic_path(p) as tmp:
        torch.save({"model": model, "config": config.to_dict()}, tmp)


def _safe_globals():
    """Also allow ``argparse.Namespace`` (training scripts store their ``args``): plain data, no code."""
    safe = getattr(torch.serialization, "safe_globals", None)
    return safe([argparse.Namespace]) if safe else contextlib.nullcontext()


def _strip_module(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key
