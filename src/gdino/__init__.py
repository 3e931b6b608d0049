"""gdino: fast pure-PyTorch Grounding DINO and Grounded-SAM.

Public API::

    import gdino
    detector = gdino.Detector.from_pretrained("grounding-dino-tiny", device="cpu")
    dets = detector.detect("cat.jpg", ["cat", "remote control"], box_threshold=0.3)

    model = gdino.load_model("grounding-dino-tiny")      # the nn.Module: tensors in, tensors out
    out = model(pixel_values, model.tokenize(["cat . remote control ."]))

Attributes are imported lazily so that ``import gdino`` and ``gdino --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "gdino.weights.load",
    "save_model": "gdino.weights.load",
    "build_model": "gdino.model.grounding_dino",
    "GroundingDINO": "gdino.model.grounding_dino",
    "GroundingDINOOutput": "gdino.model.features",
    "GroundingDINOConfig": "gdino.config",
    "get_preset": "gdino.config",
    "Detector": "gdino.infer.detector",
    "DetectOptions": "gdino.infer.options",
    "Detections": "gdino.core.detections",
    "GdinoError": "gdino.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gdino' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
