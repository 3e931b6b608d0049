"""Boxes mode: detections on every frame, associated into tracks by ByteTrack.

The association is ByteTrack as implemented by Roboflow's maintained ``trackers`` package
(``trackers.ByteTrackTracker``, which replaced ``supervision.ByteTrack``): two-stage IoU matching
of Kalman-predicted track boxes, high-confidence detections first, then low-confidence ones to
keep occluded objects alive. This module only converts between gdino's :class:`Detections` and
the tracker's ``supervision.Detections``, numbers ids from 1 and keeps a class per track: the
most frequent class of the detections a track was matched to (ties: the earliest).

The tracker is deterministic, so its state after frame ``k`` is a function of the detections of
frames ``0..k``: a resumed job rebuilds it by replaying the recorded detections (cheap: no model).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from gdino.core.detections import Detections
from gdino.errors import GdinoError
from gdino.track.results import TrackedObject


@dataclass(frozen=True)
class ByteTrackSettings:
    """ByteTrack's knobs (``trackers.ByteTrackTracker``), with the video's frame rate applied.

    Attributes:
        lost_track_buffer: frames (at 30 fps; scaled by the video's rate) a lost track waits to be found again.
        track_activation_threshold: a detection must score this much to start a track.
        high_conf_det_threshold: detections above it are matched first; the rest only continue tracks.
        minimum_iou_threshold: least IoU between a predicted track box and a detection to match.
        minimum_consecutive_frames: frames a new track must be seen before it gets an id.
    """

    lost_track_buffer: int = 30
    track_activation_threshold: float = 0.4
    high_conf_det_threshold: float = 0.4
    minimum_iou_threshold: float = 0.1
    minimum_consecutive_frames: int = 1

    def __post_init__(self) -> None:
        if self.lost_track_buffer < 0 or self.minimum_consecutive_frames < 1:
            raise GdinoError("need lost_track_buffer >= 0 and minimum_consecutive_frames >= 1")
        for name in ("track_activation_threshold", "high_conf_det_threshold", "minimum_iou_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise GdinoError(f"{name} must be in [0, 1]")


def import_trackers():
    """The ``trackers`` package, or a one-line error saying how to install it."""
    try:
        import trackers  # lazy: an optional extra ([video])
    except ImportError as e:
        raise GdinoError("boxes mode needs the trackers package (ByteTrack): pip install 'gdino[video]'") from e
    return trackers


class BoxTracker:
    """ByteTrack over gdino detections; ``update`` once per processed frame, in order."""

    def __init__(self, settings: ByteTrackSettings | None = None, fps: float = 30.0) -> None:
        trackers = import_trackers()
        s = settings or ByteTrackSettings()
        self.settings = s
        self._tracker = trackers.ByteTrackTracker(
            lost_track_buffer=s.lost_track_buffer,
            frame_rate=float(fps),
            track_activation_threshold=s.track_activation_threshold,
            minimum_consecutive_frames=s.minimum_consecutive_frames,
            minimum_iou_threshold=s.minimum_iou_threshold,
            high_conf_det_threshold=s.high_conf_det_threshold,
        )
        self._votes: dict[int, Counter[str]] = {}
        self._first_seen: dict[int, dict[str, int]] = {}
        self.frames = 0

    def update(self, detections: Detections) -> list[TrackedObject]:
        """Tracked objects (ids from 1, sorted) for the next frame's detections."""
        import supervision as sv  # lazy: comes with the trackers package

        n = len(detections)
        sv_dets = sv.Detections(
            xyxy=detections.xyxy.numpy().astype(np.float32).reshape(-1, 4),
            confidence=detections.scores.numpy().astype(np.float32).reshape(-1),
            class_id=detections.class_ids.numpy().astype(int).reshape(-1),
            data={"index": np.arange(n)},
        )
        out = self._tracker.update(sv_dets)
        self.frames += 1
        objects = []
        for k in range(len(out)):
            tid = int(out.tracker_id[k])
            if tid < 0:  # not (yet) a confirmed track
                continue
            i = int(out.data["index"][k])
            track_id = tid + 1
            label = self._vote(track_id, detections.labels[i])
            box = tuple(float(v) for v in detections.xyxy[i].tolist())
            objects.append(TrackedObject(track_id, label, float(detections.scores[i]), box))  # type: ignore[arg-type]
        return sorted(objects, key=lambda o: o.track_id)

    def _vote(self, track_id: int, label: str) -> str:
        votes = self._votes.setdefault(track_id, Counter())
        first = self._first_seen.setdefault(track_id, {})
        votes[label] += 1
        first.setdefault(label, self.frames)
        return max(votes, key=lambda name: (votes[name], -first[name]))

    def state(self) -> dict[str, Any]:
        """A small summary (for logs); the full state is rebuilt by replay, never serialized."""
        return {"frames": self.frames, "tracks": len(self._votes)}
