"""Training checkpoints: written atomically, loaded without unpickling code.

A checkpoint is a folder ``<run>/checkpoints/step_00001234/`` holding ``model.safetensors`` (the
model weights, config in the metadata), ``ema.safetensors`` (when EMA is on) and ``state.pt``: a
``torch.save``'d dict of tensors and plain Python values (optimizer, scheduler, scaler, RNG states,
epoch and data position), read back with ``torch.load(..., weights_only=True)``. The folder is
written under a temporary name and renamed into place; ``checkpoints/latest`` names the newest one.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from gdino.errors import CheckpointError

logger = logging.getLogger(__name__)

LATEST = "latest"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"


def capture_rng() -> dict[str, Any]:
    """Every random generator the loop uses (torch CPU/CUDA, Python, NumPy) as safe values."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_checkpoint(
    ckpt_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, Tensor],
    state: dict[str, Any],
    metadata: dict[str, str] | None = None,
    ema_state: dict[str, Tensor] | None = None,
    keep: int = 0,
    write_model: Callable[[dict[str, Tensor], Path], None] | None = None,
) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` at it, keep the ``keep`` newest (0 = all).

    ``write_model(state, path)`` writes the model file (default: safetensors with ``metadata``).
    """
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if write_model is not None:
        write_model(model_state, tmp / MODEL_FILE)
    else:
        save_file(_contiguous(model_state), str(tmp / MODEL_FILE), metadata=metadata or {})
    if ema_state is not None:
        save_file(_contiguous(ema_state), str(tmp / EMA_FILE), metadata=metadata or {})
    torch.save(state, tmp / STATE_FILE)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / f".{LATEST}.tmp-{os.getpid()}"
    pointer.write_text(name + "\n", encoding="utf-8")
    os.replace(pointer, root / LATEST)
    if keep > 0:
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint folder that ``path`` means: itself, or the ``latest`` of a checkpoints folder
    or of a run folder. None when there is none yet."""
    p = Path(path)
    if (p / MODEL_FILE).is_file() and (p / STATE_FILE).is_file():
        return p
    for root in (p, p / "checkpoints"):
        pointer = root / LATEST
        if pointer.is_file():
            found = root / pointer.read_text(encoding="utf-8").strip()
            if (found / STATE_FILE).is_file():
                return found
        steps = sorted(d for d in root.glob("step_*") if (d / STATE_FILE).is_file()) if root.is_dir() else []
        if steps:
            return steps[-1]
    return None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Any]]:
    """``(model_state, ema_state or None, state)`` of the checkpoint that ``path`` names."""
    found = find_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no training checkpoint found in {path}")
    try:
        model_state = load_file(str(found / MODEL_FILE))
        ema_state = load_file(str(found / EMA_FILE)) if (found / EMA_FILE).is_file() else None
        state = torch.load(found / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{found}: unreadable training checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{found / STATE_FILE}: not a gdino training state")
    return model_state, ema_state, state


def model_metadata(config_dict: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata naming the model config (as gdino's own weight files do)."""
    return {"format": "gdino", "config": json.dumps(config_dict)}
