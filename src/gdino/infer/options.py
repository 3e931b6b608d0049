"""``DetectOptions``: every setting of a detection run, in one frozen dataclass.

The same names are used everywhere: the Python API (``Detector(model, box_threshold=0.3)``,
``detector.detect(..., nms_iou=0.5)``), the CLI flags (``--box-threshold``, ``--nms-iou``...) and
the ``settings`` block of the JSON outputs (:meth:`DetectOptions.to_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeGuard

import torch

from gdino.core.images import DEFAULT_MAX_PIXELS
from gdino.core.preprocess import DEFAULT_MAX_SIZE, DEFAULT_SIZE, PreprocessConfig
from gdino.core.runtime import dtype_name, resolve_dtype
from gdino.errors import GdinoError


@dataclass(frozen=True)
class DetectOptions:
    """How images become detections (validated on creation; see docs/detect.md).

    Attributes:
        box_threshold: keep a box whose score is above this (classes mode: the class score;
            phrase mode: the highest token probability, as the official ``predict``).
        text_threshold: phrase mode: tokens above this form the label (unused for classes).
        nms_iou: if set, class-aware non-maximum suppression at this IoU (None: off, as the official).
        max_detections: keep at most this many detections per image, best first (None: all).
        batch_size: images per forward pass; results do not depend on it.
        image_size: None for the official resize (shorter side 800, longer <= 1333); an int
            shorter side (longer side capped in the same 1333/800 proportion); or an exact
            ``(height, width)``.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast on the model's device).
        remove_combined: phrase mode: never merge tokens of different phrases in a label.
        topk: classes mode: instead of one class per query, the best ``topk`` (query, class)
            pairs above ``box_threshold`` (the official evaluation post-processing).
        clip: clip boxes to the image.
        max_pixels: refuse larger images (decompression-bomb guard; None: no limit).
        classes_per_prompt: classes mode: run class lists in prompts of at most this many classes
            and keep ``topk`` pairs per prompt (mmdetection's ``chunked_size``: 40 for the published
            MM-Grounding-DINO and LLMDet LVIS numbers); None: as many classes as fit in
            ``max_text_len`` tokens, one ``topk`` over all of them.
    """

    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float | None = None
    max_detections: int | None = None
    batch_size: int = 1
    image_size: int | tuple[int, int] | None = None
    dtype: str = "fp32"
    remove_combined: bool = True
    topk: int | None = None
    clip: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    classes_per_prompt: int | None = None

    def __post_init__(self) -> None:
        for name in ("box_threshold", "text_threshold"):
            check_fraction(name, getattr(self, name))
        if self.nms_iou is not None:
            check_fraction("nms_iou", self.nms_iou)
        for name in ("max_detections", "topk", "max_pixels", "classes_per_prompt"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise GdinoError(f"{_flag(name)} must be a positive integer, got {value!r}")
        if not _positive_int(self.batch_size):
            raise GdinoError(f"{_flag('batch_size')} must be a positive integer, got {self.batch_size!r}")
        size = self.image_size
        if isinstance(size, list):
            size = tuple(size)
        if size is not None and not (
            (_positive_int(size) and size >= 32)
            or (isinstance(size, tuple) and len(size) == 2 and all(_positive_int(v) and v >= 32 for v in size))
        ):
            raise GdinoError(f"{_flag('image_size')} must be an integer >= 32 or (height, width), got {size!r}")
        object.__setattr__(self, "image_size", size)
        dtype = self.dtype if isinstance(self.dtype, (str, torch.dtype)) else str(self.dtype)
        object.__setattr__(self, "dtype", dtype_name(resolve_dtype(dtype)))

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    @property
    def preprocess(self) -> PreprocessConfig:
        """The resize rule these options ask for."""
        size = self.image_size
        if size is None:
            return PreprocessConfig(DEFAULT_SIZE, DEFAULT_MAX_SIZE)
        if isinstance(size, tuple):
            return PreprocessConfig(size=size, max_size=None)
        return PreprocessConfig(size=size, max_size=round(size * DEFAULT_MAX_SIZE / DEFAULT_SIZE))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the ``settings`` block of outputs and job files)."""
        out = asdict(self)
        if isinstance(self.image_size, tuple):
            out["image_size"] = list(self.image_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectOptions:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise GdinoError(f"unknown detection option(s): {', '.join(unknown)}")
        return cls(**data)


def check_fraction(name: str, value: Any) -> None:
    """Raise a one-line :class:`GdinoError` unless ``value`` is a number in [0, 1]."""
    try:
        ok = not isinstance(value, bool) and 0.0 <= float(value) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GdinoError(f"{_flag(name)} must be a number in [0, 1], got {value!r}")


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _flag(name: str) -> str:
    return name.replace("_", "-")
