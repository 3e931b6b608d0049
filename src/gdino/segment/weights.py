"""Segmenter weights: find them (local path or the Hugging Face cache) and load them strictly.

Files: ``.pth`` / ``.pt`` (read with ``torch.load(weights_only=True)``: a plain state dict, or one
under ``"model"``, an optional ``module.`` prefix) or ``.safetensors``. Loading is strict: every
key used once and every shape equal, otherwise a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gdino.errors import CheckpointError


@dataclass(frozen=True)
class HubFile:
    """Where released weights live: a Hugging Face repo file and the original download URL."""

    repo_id: str
    filename: str
    url: str


def resolve_weights(name: str, weights: str | os.PathLike | None, hub: HubFile | None) -> Path | None:
    """The weights file to load for segmenter ``name``.

    Args:
        weights: a local file (used as is), or None for the released weights of ``name``.
        hub: where the released weights live (None: there are none, e.g. test presets).
    Returns:
        A path, or None when ``name`` has no released weights and none were given (random init).
    Raises:
        CheckpointError: the file is missing, or the released weights are neither in the cache
            nor downloadable (offline): the message says where to put them.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"segmenter weights not found: {path}")
        return path
    if hub is None:
        return None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a core dependency
        hf_hub_download = None
    if hf_hub_download is not None:
        try:
            return Path(hf_hub_download(hub.repo_id, hub.filename, local_files_only=True))
        except Exception:  # not cached (the hub client raises several kinds)
            pass
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        if not offline:
            try:
                return Path(hf_hub_download(hub.repo_id, hub.filename))
            except Exception:  # no network, repo moved, ...: fall through to the message
                pass
    raise CheckpointError(
        f"{name} weights are not in the Hugging Face cache and could not be downloaded; download "
        f"{hub.url} (or huggingface-cli download {hub.repo_id} {hub.filename}) and pass its path "
        "with --segmenter-weights PATH"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt`` file, never unpickling code."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read as plain weights ({_first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    """Copy ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: {list(state[k].shape)} in the file, {list(own[k].shape)} in {name})")
        raise CheckpointError(f"{path}: weights do not match {name}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
