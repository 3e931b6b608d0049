"""``build_segmenter(name, weights, device, dtype)``: a ready segmenter by name.

Names (``_`` and ``-`` are interchangeable, case does not matter):

==================  ==========================================  ==============================
name                model                                       released weights (HF cache)
==================  ==========================================  ==============================
sam-vit-b/l/h       SAM ViT-B / ViT-L / ViT-H (segment-anything)  ybelkada/segment-anything
sam2.1-hiera-t/s/   SAM 2.1 Hiera tiny / small / base+ / large  facebook/sam2.1-hiera-*
b+/l                (sam2)
sam-tiny            a small SAM for tests (random init)         none
==================  ==========================================  ==============================
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import torch

from gdino.errors import GdinoError
from gdino.segment.sam_model import SAM_PRESETS, build_sam
from gdino.segment.weights import HubFile, load_strict, read_state_dict, resolve_weights

logger = logging.getLogger(__name__)

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
HUB_FILES: dict[str, HubFile] = {
    "sam-vit-b": HubFile("ybelkada/segment-anything", "checkpoints/sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth"),
    "sam-vit-l": HubFile("ybelkada/segment-anything", "checkpoints/sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth"),
    "sam-vit-h": HubFile("ybelkada/segment-anything", "checkpoints/sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth"),
}
for _size, _file in (("t", "tiny"), ("s", "small"), ("b+", "base_plus"), ("l", "large")):
    _repo = "facebook/sam2.1-hiera-" + _file.replace("_", "-")
    HUB_FILES[f"sam2.1-hiera-{_size}"] = HubFile(_repo, f"sam2.1_hiera_{_file}.pt", f"https://huggingface.co/{_repo}")

#: every accepted segmenter name
SEGMENTERS = ("sam-vit-b", "sam-vit-l", "sam-vit-h", "sam2.1-hiera-t", "sam2.1-hiera-s", "sam2.1-hiera-b+", "sam2.1-hiera-l", "sam-tiny")

_ALIASES = {
    "vit-b": "sam-vit-b", "vit-l": "sam-vit-l", "vit-h": "sam-vit-h", "sam": "sam-vit-h", "sam2": "sam2.1-hiera-l",
    "sam2.1-hiera-tiny": "sam2.1-hiera-t", "sam2.1-hiera-small": "sam2.1-hiera-s",
    "sam2.1-hiera-base-plus": "sam2.1-hiera-b+", "sam2.1-hiera-large": "sam2.1-hiera-l",
}


def canonical_name(name: str) -> str:
    """The canonical segmenter name, or a one-line :class:`GdinoError` with a suggestion."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in SEGMENTERS:
        return key
    close = difflib.get_close_matches(key, SEGMENTERS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise GdinoError(f"unknown segmenter {name!r}{hint}; choose from {', '.join(SEGMENTERS)}")


def build_segmenter(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    multimask: bool = False,
):
    """A segmenter (``.segment(rgb_image, detections) -> Detections``) ready on ``device``.

    Args:
        name: see the module docstring (``sam-vit-b``, ``sam2.1-hiera-t``, ...).
        weights: a ``.pth``/``.pt``/``.safetensors`` file; None: the released weights from the
            Hugging Face cache (downloaded when online); ``sam-tiny`` without weights stays random.
        device: where the segmenter runs.
        dtype: the segmenter's own precision (``fp32`` default, ``bf16``, ``fp16``), independent
            of the detector's.
        multimask: 3 masks per box, keep the best by predicted IoU.
    Raises:
        GdinoError: unknown name, missing package; CheckpointError: missing or mismatched weights.
    """
    from gdino.infer.runtime import resolve_device, resolve_dtype

    key = canonical_name(name)
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    if key.startswith("sam2"):
        from gdino.segment.sam2_backend import SAM2_CONFIGS, import_sam2

        import_sam2()  # missing package: say so before looking for weights
        path = resolve_weights(key, weights, HUB_FILES.get(key))
        from gdino.segment.sam2_backend import Sam2Segmenter, build_sam2_model

        model = build_sam2_model(SAM2_CONFIGS[key])
        _load(model, path, key)
        return Sam2Segmenter(model.to(dev), multimask=multimask, dtype=torch_dtype, name=key)

    from gdino.segment.predictor import SamSegmenter
    from gdino.segment.sam_model import import_segment_anything

    import_segment_anything()
    path = resolve_weights(key, weights, HUB_FILES.get(key))
    model = build_sam(SAM_PRESETS[key])
    _load(model, path, key)
    return SamSegmenter(model.to(dev), multimask=multimask, dtype=torch_dtype, name=key)


def _load(model: torch.nn.Module, path: Path | None, key: str) -> None:
    if path is None:
        logger.warning("%s: no weights given, using random weights (for tests only)", key)
        return
    load_strict(model, read_state_dict(path), key, path)
    logger.info("%s: loaded %s", key, path)
