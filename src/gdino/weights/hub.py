"""Released weights by name, through the Hugging Face Hub cache.

``grounding-dino-tiny`` / ``grounding-dino-base`` are IDEA-Research's HF-layout repositories. The
local cache is tried first; a download happens only when the files are not cached and the hub is
reachable (``HF_HUB_OFFLINE`` unset). Offline, the error says which repository to fetch and where.
"""

from __future__ import annotations

import os
from pathlib import Path

from gdino.errors import CheckpointError

#: gdino name -> Hugging Face repository
MODELS = {
    "grounding-dino-tiny": "IDEA-Research/grounding-dino-tiny",
    "grounding-dino-base": "IDEA-Research/grounding-dino-base",
}
#: files needed from a repository (weights, config, tokenizer, preprocessing)
PATTERNS = ["*.json", "*.safetensors", "vocab.txt"]


def is_known_name(name: str) -> bool:
    return name in MODELS or name in MODELS.values()


def cache_dir() -> str | None:
    """The cache folder set in the environment now (``HF_HUB_CACHE``, or ``HF_HOME``/hub), else None."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve(name: str) -> Path:
    """Local folder of the released model ``name`` (downloading it when allowed and needed).

    Raises:
        CheckpointError: not cached and offline (or the download failed): says what to fetch and where.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = MODELS.get(name, name)
    cache = cache_dir()
    try:
        return Path(snapshot_download(repo, cache_dir=cache, allow_patterns=PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    where = cache or "the default Hugging Face cache (~/.cache/huggingface/hub; set HF_HUB_CACHE to change)"
    if offline():
        raise CheckpointError(
            f"{name}: {repo} is not in {where} and HF_HUB_OFFLINE is set; when online run "
            f"`huggingface-cli download {repo}` (same cache), or download the repository folder and pass its path"
        )
    try:
        return Path(snapshot_download(repo, cache_dir=cache, allow_patterns=PATTERNS))
    except Exception as e:  # noqa: BLE001 - network/hub errors come in many types
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{name}: could not download {repo} into {where} ({text}); download the repository folder "
            "yourself and pass its path"
        ) from None
