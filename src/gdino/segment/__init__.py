"""Grounded-SAM: Grounding DINO's boxes prompt SAM / SAM 2, so a sentence yields instance masks.

Public API (imported lazily, so that ``import gdino.segment`` stays light)::

    from gdino.segment import build_segmenter
    seg = build_segmenter("sam-vit-b", "sam_vit_b_01ec64.pth", device="cpu")
    dets = gdino.Detector(model).segment("cat.jpg", ["cat"], seg)
    dets[0].masks, dets[0].mask_scores                    # [N, H, W] bool, SAM's predicted IoU
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_segmenter": "gdino.segment.build",
    "SEGMENTERS": "gdino.segment.names",
    "canonical_name": "gdino.segment.names",
    "SamSegmenter": "gdino.segment.predictor",
    "Sam2Segmenter": "gdino.segment.sam2_backend",
    "SamConfig": "gdino.segment.sam_model",
    "build_sam": "gdino.segment.sam_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gdino.segment' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
