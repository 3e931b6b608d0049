"""``load_model`` / ``save_model``: every supported weights format in, a ready GroundingDINO out.

Formats (see docs/internals.md for gdino's names):

- ``official``: the released ``.pth`` (``{"model": state_dict}`` or a bare state dict);
- ``mmdet``: mmdetection's ``.pth`` (``{"state_dict": ...}``; MM-Grounding-DINO, LLMDet), read from
  any ``.pth`` whose keys are mmdetection's, written with ``fmt="mmdet"``;
- ``hf``: a Hugging Face folder (``config.json`` + ``model.safetensors`` + tokenizer files);
- ``gdino``: gdino's ``.safetensors`` with config and vocabulary in the metadata;
- a name, ``grounding-dino-tiny`` / ``grounding-dino-base``, resolved through the hub cache.

Loading is strict (:mod:`gdino.weights.strict`): every key used once, shapes checked, a short
allow-list of known leftovers. Buffers that are pure functions of the config (Swin's
``relative_position_index``, BERT's position ids) are recomputed, never read from files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gdino.config import PRESETS, GroundingDINOConfig, get_preset
from gdino.core.runtime import resolve_device, resolve_dtype
from gdino.errors import CheckpointError, GdinoError
from gdino.model.backbone import WindowAttention, relative_position_index
from gdino.model.grounding_dino import GroundingDINO
from gdino.text.tokenizer import default_tokenizer_dir, load_tokenizer
from gdino.weights import hf, hub, mmdet, native, official
from gdino.weights.hf_config import config_from_hf
from gdino.weights.strict import Route, gather, scatter

logger = logging.getLogger(__name__)

FORMATS = ("official", "hf", "gdino", "mmdet")
_DERIVED = re.compile(r"(^|\.)relative_position_index$")
_CLASS_BIAS = re.compile(r"(^|\.)class_embed\.(\d+\.)?bias$")
_OFFICIAL_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


@dataclass
class Checkpoint:
    """A checkpoint read from disk, before it is mapped onto a model."""

    state: dict[str, Tensor]
    config: GroundingDINOConfig
    routes: Callable[[list[str], GroundingDINOConfig], dict[str, Route]]
    allowed: Callable[[str], bool]
    origin: str
    kind: str
    tokenizer_dirs: list[Path] = field(default_factory=list)
    vocab: str | None = None


def load_model(
    weights: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    config: GroundingDINOConfig | str | None = None,
    tokenizer: Any = None,
) -> GroundingDINO:
    """A GroundingDINO in eval mode with its tokenizer attached.

    Args:
        weights: official ``.pth``, HF-layout folder, gdino ``.safetensors``, or
            ``grounding-dino-tiny`` / ``grounding-dino-base``.
        device, dtype: where to put it (``"cpu"``, ``"cuda"``...; ``fp32``/``fp16``/``bf16``).
        config: a preset name or config overriding what the checkpoint says (or infers).
        tokenizer: a tokenizer object or a folder / ``vocab.txt``; default: the one stored with the
            weights, one beside them, or bert-base-uncased from the local Hugging Face cache.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, wrong architecture, keys that do not
            fit, or no tokenizer to be found.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    ckpt = read_checkpoint(weights, config)
    tok = find_tokenizer(ckpt, tokenizer)
    if tok is None:
        raise CheckpointError(
            f"no tokenizer for {ckpt.origin}: put bert-base-uncased's vocab.txt (or tokenizer.json) beside the "
            "weights or in a bert-base-uncased/ folder there, pass tokenizer=PATH, or cache it with "
            f"`{hub.download_command('bert-base-uncased', 'vocab.txt')}`"
        )
    model = model_from_checkpoint(ckpt)
    model.tokenizer = tok
    return model.to(device=dev, dtype=dt).eval()


def save_model(model: GroundingDINO, path: str | os.PathLike) -> None:
    """gdino's format: one ``.safetensors`` with config and vocabulary in its metadata (atomic)."""
    native.write(_own_state(model), model.config, path, model.tokenizer)


def save_official(model: GroundingDINO, path: str | os.PathLike) -> None:
    """The official ``.pth`` layout (``{"model": ..., "config": ...}``; the box head written 2 x dec_layers times)."""
    state = _own_state(model)
    official.write_pth(scatter(state, official.routes(list(state), model.config)), model.config, path)


def save_hf(model: GroundingDINO, folder: str | os.PathLike) -> None:
    """A Hugging Face folder that transformers' ``GroundingDinoForObjectDetection.from_pretrained`` loads."""
    state = _own_state(model)
    hf.write_folder(scatter(state, hf.routes(list(state), model.config)), model.config, folder, model.tokenizer)


def save_mmdet(model: GroundingDINO, path: str | os.PathLike) -> None:
    """mmdetection's ``.pth`` layout (``{"state_dict": ..., "meta": {"gdino_config": ...}}``)."""
    state = _own_state(model)
    mmdet.write_pth(scatter(state, mmdet.routes(list(state), model.config)), model.config, path)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fmt: str | None = None,
    config: GroundingDINOConfig | str | None = None,
) -> str:
    """Convert weights between the formats; returns the format written (``fmt`` or guessed from ``dst``)."""
    fmt = fmt or guess_format(dst)
    if fmt not in FORMATS:
        raise GdinoError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    ckpt = read_checkpoint(src, config)
    model = model_from_checkpoint(ckpt)
    model.tokenizer = find_tokenizer(ckpt, None)
    if model.tokenizer is None:
        logger.warning("no tokenizer found for %s; %s is written without one", ckpt.origin, dst)
    {"official": save_official, "hf": save_hf, "gdino": save_model, "mmdet": save_mmdet}[fmt](model, dst)
    return fmt


def guess_format(dst: str | os.PathLike) -> str:
    """``.pth``/``.pt`` -> official, ``.safetensors`` -> gdino, a folder (or no suffix) -> hf."""
    p = Path(dst)
    suffix = p.suffix.lower()
    if suffix in {".pth", ".pt"}:
        return "official"
    if suffix == ".safetensors":
        return "gdino"
    if p.is_dir() or not suffix:
        return "hf"
    raise GdinoError(f"cannot tell the format of {p} from its suffix; pass --format official|hf|gdino|mmdet")


# ---------------------------------------------------------------------------------------- reading


def read_checkpoint(weights: str | os.PathLike, config: GroundingDINOConfig | str | None = None) -> Checkpoint:
    """Read any supported weights into a :class:`Checkpoint` (no model built yet)."""
    override = get_preset(config) if isinstance(config, str) else config
    text = os.fspath(weights)
    p = Path(text).expanduser()
    if p.is_dir():
        return _read_hf(p, override)
    if p.is_file():
        if p.suffix.lower() == ".safetensors" or _is_safetensors(p):
            if p.name == "model.safetensors" and (p.parent / "config.json").is_file():
                return _read_hf(p.parent, override)
            return _read_native(p, override)
        return _read_official(p, override)
    if hub.is_known_name(text):
        return _read_hf(hub.resolve(text), override, origin=text)
    if os.sep in text or "/" in text or p.suffix.lower() in _OFFICIAL_SUFFIXES | {".safetensors"}:
        raise CheckpointError(f"checkpoint not found: {p}")
    raise CheckpointError(f"unknown weights {text!r}: not a file or folder, and not one of {', '.join(hub.MODELS)}")


def _read_official(path: Path, override: GroundingDINOConfig | None) -> Checkpoint:
    state, saved = official.read_pth(path)
    origin = str(path)
    if mmdet.is_mmdet(state):
        return _read_mmdet(path, state, saved, override)
    official.check_architecture(state, origin)
    native_names = official.is_native(state)
    if override is not None:
        cfg = override
    elif saved is not None:
        try:
            cfg = GroundingDINOConfig.from_dict(saved)
        except (GdinoError, TypeError, ValueError) as e:
            raise CheckpointError(f"{origin}: bad config entry: {e}") from None
    else:
        cfg = _infer_config(state, origin, native_names)
    dirs = [path.parent / "bert-base-uncased", path.parent / "tokenizer", path.parent]
    return Checkpoint(
        state,
        cfg,
        lambda keys, c: official.routes(keys, c, native_names),
        official.allowed_leftover,
        origin,
        "official",
        dirs,
    )


def _read_mmdet(
    path: Path, state: dict[str, Tensor], saved: dict[str, Any] | None, override: GroundingDINOConfig | None
) -> Checkpoint:
    origin = str(path)
    if override is not None:
        cfg = override
    elif saved is not None:
        try:
            cfg = GroundingDINOConfig.from_dict(saved)
        except (GdinoError, TypeError, ValueError) as e:
            raise CheckpointError(f"{origin}: bad gdino_config entry: {e}") from None
    else:
        cfg = mmdet.infer_config(state, origin, PRESETS)
    dirs = [path.parent / "bert-base-uncased", path.parent / "tokenizer", path.parent]
    return Checkpoint(
        mmdet.to_official_values(state),
        cfg,
        mmdet.routes,
        mmdet.allowed_leftover,
        origin,
        "mmdet",
        dirs,
    )


def _read_hf(folder: Path, override: GroundingDINOConfig | None, origin: str | None = None) -> Checkpoint:
    origin = origin or str(folder)
    state, data = hf.read_folder(folder)
    cfg = override or config_from_hf(
        data,
        origin,
        with_pooler=hf.has_pooler(state),
        per_layer_boxes=hf.layers_differ(state, "bbox_embed"),
        per_layer_classes=hf.layers_differ(state, "class_embed"),
    )
    v5 = hf.uses_v5_names(state)
    return Checkpoint(
        state,
        cfg,
        lambda keys, c: hf.routes(keys, c, v5),
        hf.allowed_leftover,
        origin,
        "hf",
        [folder],
    )


def _read_native(path: Path, override: GroundingDINOConfig | None) -> Checkpoint:
    state, cfg, vocab = native.read(path)
    dirs = [path.with_suffix(""), path.parent / "tokenizer", path.parent]
    return Checkpoint(
        state,
        override or cfg,
        lambda keys, c: {k: Route((k,)) for k in keys},
        lambda k: False,
        str(path),
        "gdino",
        dirs,
        vocab,
    )


def _infer_config(state: dict[str, Tensor], origin: str, native_names: bool) -> GroundingDINOConfig:
    """The preset whose shapes fit (Swin-T: embed dim 96, Swin-B: 128), BERT pooler as in the file;
    class-head biases (``class_embed...bias``) select the MM-Grounding-DINO head variant."""
    embed = official.backbone_embed_dim(state)
    pooler = any(k.startswith("bert.pooler.") for k in state)
    biased = any(_CLASS_BIAS.search(k) for k in state)
    candidates = [
        dataclasses.replace(c, text=dataclasses.replace(c.text, with_pooler=pooler))
        for c in PRESETS.values()
        if c.backbone.embed_dim == embed and c.contrastive_bias == biased
    ]
    if len(candidates) > 1:
        candidates = [c for c in candidates if _fits(c, state, native_names)]
    if not candidates:
        raise CheckpointError(
            f"{origin}: cannot tell the architecture from its shapes (Swin embed dim {embed}); "
            f"pass config= one of: {', '.join(sorted(PRESETS))}"
        )
    return candidates[0]


def _fits(cfg: GroundingDINOConfig, state: dict[str, Tensor], native_names: bool) -> bool:
    with torch.device("meta"):
        model = GroundingDINO(cfg)
    expected = _expected_shapes(model)
    try:
        gather(state, official.routes(list(expected), cfg, native_names), expected, official.allowed_leftover, "")
    except CheckpointError:
        return False
    return True


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


# ---------------------------------------------------------------------------------------- building


def model_from_checkpoint(ckpt: Checkpoint) -> GroundingDINO:
    """Build the architecture of ``ckpt.config`` and fill it strictly from ``ckpt.state`` (CPU, fp32)."""
    model = _empty_model(ckpt.config)
    expected = _expected_shapes(model)
    state = gather(ckpt.state, ckpt.routes(list(expected), ckpt.config), expected, ckpt.allowed, ckpt.origin)
    own = model.state_dict()
    for key in own:
        if key not in state:  # derived buffers, recomputed in _empty_model
            state[key] = own[key]
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.eval()


def find_tokenizer(ckpt: Checkpoint, tokenizer: Any) -> Any:
    """The tokenizer for ``ckpt``: given, embedded, beside the weights, or cached; None if none."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    if ckpt.vocab:
        return native.tokenizer_from_vocab(ckpt.vocab, ckpt.origin)
    for folder in ckpt.tokenizer_dirs:
        if folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES):
            return load_tokenizer(folder)
    cached = default_tokenizer_dir(hub.cache_dir())
    return load_tokenizer(cached) if cached else None


def _expected_shapes(model: GroundingDINO) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items() if not _DERIVED.search(k)}


def _own_state(model: GroundingDINO) -> dict[str, Tensor]:
    """Parameters and persistent buffers to store (on the CPU), without the recomputed ones."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not _DERIVED.search(k)}


def _empty_model(cfg: GroundingDINOConfig) -> GroundingDINO:
    """The architecture without random initialization (seconds saved on Swin-T/B).

    Built on the meta device, then given uninitialized CPU storage; every parameter is then
    overwritten by the checkpoint and the known buffers are recomputed here. An unknown buffer
    falls back to a normal (slow) build.
    """
    with torch.device("meta"):
        model = GroundingDINO(cfg)
    fills: list[tuple[torch.nn.Module, str, Tensor]] = []
    for module in model.modules():
        for name, buf in module.named_buffers(recurse=False):
            if name == "relative_position_index" and isinstance(module, WindowAttention):
                value = relative_position_index(module.window_size)
            elif name == "position_ids":
                value = torch.arange(buf.shape[-1]).expand(buf.shape)
            elif name == "token_type_ids":
                value = torch.zeros(buf.shape, dtype=torch.long)
            else:
                logger.debug("unknown buffer %s: building %s the slow way", name, cfg.name)
                return GroundingDINO(cfg).eval()
            fills.append((module, name, value))
    model = model.to_empty(device="cpu")
    for module, name, value in fills:
        module._buffers[name] = value.to(module.get_buffer(name).dtype).clone()
    return model.eval()
