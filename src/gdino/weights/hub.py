"""Released weights by name, through the Hugging Face Hub cache: the one resolver every loader uses.

``grounding-dino-tiny`` / ``grounding-dino-base`` are IDEA-Research's HF-layout repositories;
``mm-grounding-dino-*`` OpenMMLab's MM-Grounding-DINO and ``llmdet-*`` iSEE-Laboratory's LLMDet, both as
transformers' ``MMGroundingDinoForObjectDetection`` writes them (docs/weights.md says which to pick);
segmenters and tokenizers name single files. The local cache is tried first; a download happens
only when the files are not cached and the hub is reachable (``HF_HUB_OFFLINE`` unset). The errors
tell the two failures apart: "not cached and offline" says what to fetch, with the download
command of the installed ``huggingface_hub``; "download failed" names the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from gdino.errors import CheckpointError, first_line

#: gdino name -> Hugging Face repository
MODELS = {
    "grounding-dino-tiny": "IDEA-Research/grounding-dino-tiny",
    "grounding-dino-base": "IDEA-Research/grounding-dino-base",
    # MM-Grounding-DINO (mmdetection's open reproduction); the short names are the zero-shot models
    # transformers' documentation uses (Swin-T) and the widest zero-shot pre-training (Swin-B, Swin-L)
    "mm-grounding-dino-tiny": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
    "mm-grounding-dino-base": "openmmlab-community/mm_grounding_dino_base_o365v1_goldg_v3det",
    "mm-grounding-dino-large": "openmmlab-community/mm_grounding_dino_large_o365v2_oiv6_goldg",
    "mm-grounding-dino-tiny-o365v1-goldg": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg",
    "mm-grounding-dino-tiny-o365v1-goldg-grit": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_grit",
    "mm-grounding-dino-tiny-o365v1-goldg-grit-v3det": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_grit_v3det",
    # trained on COCO, LVIS, RefCOCO and more too: not zero-shot on those benchmarks
    "mm-grounding-dino-base-all": "openmmlab-community/mm_grounding_dino_base_all",
    "mm-grounding-dino-large-all": "openmmlab-community/mm_grounding_dino_large_all",
    # LLMDet (CVPR 2025): MM-Grounding-DINO fine-tuned with a large language model's supervision
    "llmdet-tiny": "iSEE-Laboratory/llmdet_tiny",
    "llmdet-base": "iSEE-Laboratory/llmdet_base",
    "llmdet-large": "iSEE-Laboratory/llmdet_large",
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
    """``HF_HUB_OFFLINE`` is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download_command(repo: str, filename: str | None = None) -> str:
    """The shell command that fetches ``repo`` (or one file of it) with the installed huggingface_hub:
    ``hf download`` since 0.34, ``huggingface-cli download`` before."""
    major, minor = (int(p) for p in huggingface_hub.__version__.split(".")[:2])
    tool = "hf" if (major, minor) >= (0, 34) else "huggingface-cli"
    return f"{tool} download {repo}" + (f" {filename}" if filename else "")


def resolve(name: str) -> Path:
    """Local folder of the released model ``name`` (downloading it when allowed and needed)."""
    repo = MODELS.get(name, name)
    return fetch(repo, what=name, hint="or download the repository folder and pass its path")


def fetch(repo: str, filename: str | None = None, *, what: str, hint: str) -> Path:
    """A cached snapshot of ``repo`` (or its file ``filename``), downloaded when allowed and needed.

    Args:
        what: what is being looked for, for the message (``"grounding-dino-tiny"``, ``"sam-vit-b weights"``).
        hint: how else to provide it (``"pass its path with --segmenter-weights PATH"``).

    Raises:
        CheckpointError: not cached while offline (what to run, and where it goes), or the download
            failed (and why).
    """
    cache = cache_dir()
    where = cache or "the default Hugging Face cache (~/.cache/huggingface/hub; set HF_HUB_CACHE to change)"
    target = f"{repo}/{filename}" if filename else repo

    def get(local_only: bool) -> Path:
        if filename is None:
            return Path(snapshot_download(repo, cache_dir=cache, allow_patterns=PATTERNS, local_files_only=local_only))
        return Path(hf_hub_download(repo, filename, cache_dir=cache, local_files_only=local_only))

    try:
        return get(local_only=True)
    except LocalEntryNotFoundError:
        pass  # not cached: download below, when allowed
    if offline():
        raise CheckpointError(
            f"{what}: {target} is not in {where} and HF_HUB_OFFLINE is set; when online run "
            f"`{download_command(repo, filename)}` (same cache), {hint}"
        )
    try:
        return get(local_only=False)
    except Exception as e:  # noqa: BLE001 - network, auth, disk and hub errors come in many types
        raise CheckpointError(f"{what}: downloading {target} into {where} failed ({first_line(e)}); {hint}") from None
