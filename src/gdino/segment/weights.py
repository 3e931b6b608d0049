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
from safetensors.torch import load_file

from gdino.errors import CheckpointError, first_line
from gdino.weights.hub import fetch
from gdino.weights.strict import load_state_dict_strict


@dataclass(frozen=True)
class HubFile:
    """Where released weights live: a Hugging Face repository file."""

    repo_id: str
    filename: str


def resolve_weights(name: str, weights: str | os.PathLike | None, hub: HubFile | None) -> Path | None:
    """The weights file to load for segmenter ``name``.

    Args:
        weights: a local file (used as is), or None for the released weights of ``name``.
        hub: where the released weights live (None: there are none, e.g. test presets).
    Returns:
        A path, or None when ``name`` has no released weights and none were given (random init).
    Raises:
        CheckpointError: the file is missing, or the released weights are not cached while
            offline, or their download failed (:func:`gdino.weights.hub.fetch` says which).
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"segmenter weights not found: {path}")
        return path
    if hub is None:
        return None
    return fetch(
        hub.repo_id, hub.filename, what=f"{name} weights", hint="or pass a local file with --segmenter-weights PATH"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt`` file, never unpickling code."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read as plain weights ({first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    """Copy ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error."""
    load_state_dict_strict(module, state, source=str(path), what=name)
