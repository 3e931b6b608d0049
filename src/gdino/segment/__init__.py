"""Grounded-SAM: Grounding DINO's boxes prompt SAM / SAM 2, so a sentence yields instance masks.

Public API (imported lazily)::

    from gdino.segment import build_segmenter, segment
    seg = build_segmenter("sam-vit-b", "sam_vit_b_01ec64.pth", device="cpu")
    dets = segment(model, "cat.jpg", ["cat"], seg)        # or model.segment(...)
    dets[0].masks, dets[0].mask_scores                    # [N, H, W] bool, SAM's predicted IoU
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_segmenter": "gdino.segment.build",
    "SEGMENTERS": "gdino.segment.build",
    "segment": "gdino.segment.pipeline",
    "SamSegmenter": "gdino.segment.predictor",
    "Sam2Segmenter": "gdino.segment.sam2_backend",
    "SamConfig": "gdino.segment.sam_model",
    "build_sam": "gdino.segment.sam_model",
    "encode_mask": "gdino.segment.rle",
    "decode_mask": "gdino.segment.rle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gdino.segment' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
