"""ONNX export of Grounding DINO and runners for the exported graphs (ONNX Runtime, OpenVINO).

``export_onnx`` writes one dynamic-shape graph (or, with ``split=True``, a text-encoder graph and
the rest); :mod:`gdino.export.runtimes` runs them behind the same interface as the PyTorch model.
See docs/export.md.
"""

from gdino.export.graph import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    DetectionGraph,
    FeaturesGraph,
    TextGraph,
)

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "DetectionGraph", "FeaturesGraph", "TextGraph"]
