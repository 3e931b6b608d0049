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

import logging
import os
from pathlib import Path

import torch

from gdino.core.runtime import resolve_device, resolve_dtype
from gdino.segment.names import canonical_name
from gdino.segment.predictor import SamSegmenter
from gdino.segment.sam2_backend import SAM2_CONFIGS, Sam2Segmenter, build_sam2_model, import_sam2
from gdino.segment.sam_model import SAM_PRESETS, build_sam, import_segment_anything
from gdino.segment.weights import HubFile, load_strict, read_state_dict, resolve_weights

logger = logging.getLogger(__name__)

HUB_FILES: dict[str, HubFile] = {
    "sam-vit-b": HubFile("ybelkada/segment-anything", "checkpoints/sam_vit_b_01ec64.pth"),
    "sam-vit-l": HubFile("ybelkada/segment-anything", "checkpoints/sam_vit_l_0b3195.pth"),
    "sam-vit-h": HubFile("ybelkada/segment-anything", "checkpoints/sam_vit_h_4b8939.pth"),
}
for _size, _file in (("t", "tiny"), ("s", "small"), ("b+", "base_plus"), ("l", "large")):
    _repo = "facebook/sam2.1-hiera-" + _file.replace("_", "-")
    HUB_FILES[f"sam2.1-hiera-{_size}"] = HubFile(_repo, f"sam2.1_hiera_{_file}.pt")


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
    key = canonical_name(name)
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    if key.startswith("sam2"):
        import_sam2()  # missing package: say so before looking for weights
        path = resolve_weights(key, weights, HUB_FILES.get(key))

        model = build_sam2_model(SAM2_CONFIGS[key])
        _load(model, path, key)
        return Sam2Segmenter(model.to(dev), multimask=multimask, dtype=torch_dtype, name=key)

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
