"""gdino's own checkpoint: one ``.safetensors`` file, gdino key names, the model config (JSON) and
the tokenizer vocabulary in the file's metadata. Written atomically (temporary file + rename)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from gdino import __version__
from gdino.config import GroundingDINOConfig
from gdino.core.files import atomic_path
from gdino.errors import CheckpointError, GdinoError, first_line
from gdino.text.tokenizer import load_tokenizer
from gdino.weights.strict import contiguous

logger = logging.getLogger(__name__)

FORMAT = "gdino-1"
_CONFIG = "gdino_config"
_VOCAB = "gdino_vocab"


def write(
    state: Mapping[str, Tensor], config: GroundingDINOConfig, path: str | os.PathLike, tokenizer: Any = None
) -> None:
    """Save tensors + config (+ the tokenizer's WordPiece vocabulary, when it has one) to ``path``."""

    p = Path(path)
    metadata = {
        "format": "pt",
        "gdino_format": FORMAT,
        "gdino_version": __version__,
        _CONFIG: json.dumps(config.to_dict()),
    }
    vocab = vocab_text(tokenizer) if tokenizer is not None else None
    if vocab is not None:
        metadata[_VOCAB] = vocab
    with atomic_path(p) as tmp:
        save_file(contiguous(state), str(tmp), metadata=metadata)


def read(path: str | os.PathLike) -> tuple[dict[str, Tensor], GroundingDINOConfig, str | None]:
    """``(tensors, config, vocabulary text or None)`` of a gdino ``.safetensors`` file.

    Raises:
        CheckpointError: missing, truncated, or not a gdino file (no config in the metadata).
    """

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError / OSError
        raise CheckpointError(f"cannot read {p} (truncated or not a safetensors file): {first_line(e)}") from None
    if _CONFIG not in metadata:
        raise CheckpointError(
            f"{p} is a safetensors file without a gdino config in its metadata; pass a Hugging Face model "
            "folder (with config.json) or a file written by gdino.save_model / gdino convert"
        )
    try:
        config = GroundingDINOConfig.from_dict(json.loads(metadata[_CONFIG]))
    except (ValueError, TypeError, GdinoError) as e:
        raise CheckpointError(f"{p}: bad gdino config in metadata: {e}") from None
    return state, config, metadata.get(_VOCAB)


def vocab_text(tokenizer: Any) -> str | None:
    """The vocabulary as ``vocab.txt`` text (one token per line, line i = id i), or None."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, TypeError):
        return None
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))) or any("\n" in t for t in tokens):
        logger.warning("tokenizer vocabulary has gaps or odd tokens; not embedding it in the checkpoint")
        return None
    return "\n".join(tokens) + "\n"


def tokenizer_from_vocab(text: str, origin: str) -> Any:
    """A fast lower-casing BERT tokenizer from embedded ``vocab.txt`` text."""
    with tempfile.TemporaryDirectory(prefix="gdino-vocab-") as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text(text, encoding="utf-8")
        try:
            return load_tokenizer(vocab)
        except GdinoError as e:
            raise CheckpointError(f"{origin}: embedded vocabulary unusable: {e}") from None
