"""Devices and dtypes chosen by name, validated with one-line errors, and the autocast context."""

from __future__ import annotations

import contextlib
import re

import torch

from gdino.errors import GdinoError

#: dtype names accepted by ``--dtype`` and ``detect(dtype=...)``.
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"``/None (cuda, then mps, then cpu).

    Raises:
        GdinoError: an unknown name, or a device this machine does not have.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    text = str(name).strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        raise GdinoError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GdinoError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise GdinoError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    if text == "mps" and not _mps_available():
        raise GdinoError("device 'mps' requested but Apple MPS is not available here; use --device cpu")
    return torch.device(text)


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """``fp32`` / ``fp16`` / ``bf16`` (and their long names) -> a torch dtype; None -> float32."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        raise GdinoError(f"unsupported dtype {name}; use fp32, fp16 or bf16")
    dtype = DTYPES.get(str(name).strip().lower())
    if dtype is None:
        raise GdinoError(f"unknown dtype {name!r}; use fp32, fp16 or bf16")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (``fp32``, ``fp16``, ``bf16``) of a supported dtype."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[resolve_dtype(dtype)]


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse combinations that cannot run (one-line :class:`GdinoError`)."""
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GdinoError("this GPU does not support bf16; use --dtype fp16 or fp32")


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for ``dtype`` on ``device`` (a no-op context for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
