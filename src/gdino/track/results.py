"""What tracking yields per frame: the tracked objects with their ids (and masks in masks mode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gdino.core.rle import decode_mask, encode_mask


@dataclass(frozen=True)
class TrackedObject:
    """One object in one frame.

    Attributes:
        track_id: the identity, from 1, stable over the video.
        label: the track's class name (kept per track).
        score: the detector's confidence for the box it was matched to (masks mode: at its last anchor).
        xyxy: the box in pixels.
        mask: ``HxW`` bool (masks mode), else None.
    """

    track_id: int
    label: str
    score: float
    xyxy: tuple[float, float, float, float]
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.track_id,
            "label": self.label,
            "score": round(float(self.score), 5),
            "box": [round(float(v), 2) for v in self.xyxy],
        }
        if self.mask is not None:
            d["mask"] = encode_mask(self.mask)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackedObject:
        mask = decode_mask(d["mask"]) if "mask" in d else None
        x0, y0, x1, y1 = (float(v) for v in d["box"])
        return cls(int(d["id"]), str(d["label"]), float(d["score"]), (x0, y0, x1, y1), mask)


@dataclass(frozen=True)
class FrameTracks:
    """The tracked objects of one frame.

    Attributes:
        frame: the frame's index in the source (from 0; MOTChallenge files count from 1).
        time: seconds from the start of the video, when known.
        size: ``(width, height)``.
        objects: tracked objects, by track id.
        image: the frame itself (``HxWx3`` uint8 RGB) when the iterator was asked to keep it.
    """

    frame: int
    time: float | None
    size: tuple[int, int]
    objects: tuple[TrackedObject, ...]
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "time": None if self.time is None else round(float(self.time), 4),
            "objects": [o.to_dict() for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], size: tuple[int, int]) -> FrameTracks:
        objs = tuple(TrackedObject.from_dict(o) for o in d["objects"])
        return cls(int(d["frame"]), d.get("time"), size, objs)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight xyxy box of a bool mask (right/bottom exclusive), None when empty."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return float(x0), float(y0), float(x1 + 1), float(y1 + 1)
