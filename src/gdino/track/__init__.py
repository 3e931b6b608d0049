"""Text-prompted multi-object tracking in video (``gdino track``; docs/track.md).

Tracking sits above inference in gdino's layers, so it is a function taking a
:class:`gdino.Detector`, not a Detector method. Public API (imported lazily, so that
``import gdino.track`` stays light)::

    from gdino.track import track
    for ft in track(detector, "video.mp4", ["person", "car"]):   # a file, a frames folder or rtsp://
        ft.frame, [(o.track_id, o.label, o.score, o.xyxy) for o in ft.objects]

    from gdino.track import track_video, TrackSettings            # the resumable job with output files
    track_video(detector, "video.mp4", "out/", ["person"], settings=TrackSettings(mode="boxes"))
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "track": "gdino.track.stream",
    "TrackSettings": "gdino.track.stream",
    "track_video": "gdino.track.job",
    "TrackSummary": "gdino.track.job",
    "FrameTracks": "gdino.track.results",
    "TrackedObject": "gdino.track.results",
    "ByteTrackSettings": "gdino.track.boxes",
    "MaskSettings": "gdino.track.masks",
    "VideoSource": "gdino.track.source",
    "FrameRange": "gdino.track.source",
    "InputVideoError": "gdino.track.source",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gdino.track' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
