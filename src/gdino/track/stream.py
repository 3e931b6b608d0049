"""The tracking loop: frames -> detections -> tracks, as an iterator (``gdino.track.track``).

Tracking sits above inference in gdino's layers, so it is a function that takes a
:class:`gdino.Detector` rather than a method of it::

    from gdino import Detector
    from gdino.track import track

    det = Detector.from_pretrained("grounding-dino-tiny")
    for ft in track(det, "street.mp4", ["person", "car"]):      # or "rtsp://...", or a frames folder
        print(ft.frame, [(o.track_id, o.label, o.xyxy) for o in ft.objects])

Results come frame by frame as they are decoded (boxes mode) or window by window (masks mode),
so the loop works on live streams. Chunks (:class:`Chunk`) carry what a resumable job records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from gdino.core.detections import Detections
from gdino.errors import GdinoError
from gdino.infer.detector import Detector, PromptInput
from gdino.infer.options import DetectOptions
from gdino.infer.prompts import Prompt
from gdino.track.boxes import BoxTracker, ByteTrackSettings
from gdino.track.masks import MaskSettings, MaskTracker
from gdino.track.results import FrameTracks
from gdino.track.source import Frame, FrameRange, VideoSource

logger = logging.getLogger(__name__)

MODES = ("boxes", "masks")


@dataclass(frozen=True)
class TrackSettings:
    """How to track (everything but the detection options, which are :class:`DetectOptions`).

    Attributes:
        mode: ``"boxes"`` (ByteTrack on every frame) or ``"masks"`` (SAM 2 video propagation).
        start, end, stride: which source frames (``end`` exclusive, None: to the end).
        chunk: processed frames per journal record in boxes mode (masks mode: one window).
        bytetrack: boxes-mode association settings.
        masks: masks-mode settings (``detect_every`` and matching).
    """

    mode: str = "boxes"
    start: int = 0
    end: int | None = None
    stride: int = 1
    chunk: int = 32
    bytetrack: ByteTrackSettings = field(default_factory=ByteTrackSettings)
    masks: MaskSettings = field(default_factory=MaskSettings)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise GdinoError(f"unknown tracking mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.chunk < 1:
            raise GdinoError("chunk must be at least 1")
        FrameRange(self.start, self.end, self.stride)  # validates

    @property
    def frame_range(self) -> FrameRange:
        return FrameRange(self.start, self.end, self.stride)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.mode == "boxes":
            del d["masks"]
        else:
            del d["bytetrack"]
        return d


@dataclass
class Chunk:
    """Consecutive processed frames: their tracks, the boxes-mode detections fed to the tracker
    (replayed on resume), and the masks-mode tracker state after the last frame."""

    frames: list[FrameTracks]
    detections: list[dict[str, Any]] | None = None
    state: dict[str, Any] | None = None


def quantized(dets: Detections) -> Detections:
    """Boxes to 0.01 px and scores to 1e-5: what the journal stores exactly, so that replaying it
    gives the tracker the very same numbers as the first run did."""
    return replace(
        dets,
        xyxy=torch.round(dets.xyxy.double() * 100).float() / 100,
        scores=torch.round(dets.scores.double() * 1e5).float() / 1e5,
    )


def detections_record(dets: Detections) -> dict[str, Any]:
    return {
        "boxes": [[float(v) for v in row] for row in dets.xyxy.tolist()],
        "scores": [float(v) for v in dets.scores.tolist()],
        "class_ids": [int(v) for v in dets.class_ids.tolist()],
        "labels": list(dets.labels),
    }


def detections_from_record(rec: dict[str, Any], size: tuple[int, int]) -> Detections:
    return Detections(
        torch.tensor(rec["boxes"], dtype=torch.float32).reshape(-1, 4),
        torch.tensor(rec["scores"], dtype=torch.float32),
        torch.tensor(rec["class_ids"], dtype=torch.long),
        rec["labels"],
        size,
    )


def detect_frames(
    detector: Detector, frames: Iterator[Frame], prompt: Prompt, options: DetectOptions
) -> Iterator[tuple[Frame, Detections]]:
    """``(frame, detections)`` in frame order (the detector batches ``options.batch_size`` frames)."""
    held: dict[int, Frame] = {}
    done: dict[int, Detections] = {}
    expected = 0

    def items() -> Iterator[tuple[int, Any, Prompt]]:
        for i, frame in enumerate(frames):
            held[i] = frame
            yield i, frame.image, prompt

    for i, dets in detector.run(items(), options):
        done[i] = dets
        while expected in done:
            yield held.pop(expected), quantized(done.pop(expected))
            expected += 1


def boxes_chunks(
    detector: Detector,
    source: VideoSource,
    prompt: Prompt,
    options: DetectOptions,
    tracker: BoxTracker,
    chunk: int,
    keep_images: bool = False,
) -> Iterator[Chunk]:
    """Boxes mode, ``chunk`` processed frames at a time."""
    frames: list[FrameTracks] = []
    records: list[dict[str, Any]] = []
    for frame, dets in detect_frames(detector, iter(source), prompt, options):
        objects = tracker.update(dets)
        frames.append(
            FrameTracks(frame.index, frame.time, frame.size, tuple(objects), frame.image if keep_images else None)
        )
        records.append(detections_record(dets))
        if len(frames) >= chunk:
            yield Chunk(frames, records)
            frames, records = [], []
    if frames:
        yield Chunk(frames, records)


def masks_chunks(
    detector: Detector,
    source: VideoSource,
    prompt: Prompt,
    options: DetectOptions,
    tracker: MaskTracker,
    keep_images: bool = False,
) -> Iterator[Chunk]:
    """Masks mode, one window of ``detect_every`` processed frames at a time."""
    window: list[Frame] = []

    def run(window: list[Frame]) -> Chunk:
        _, dets = next(iter(detector.run([(0, window[0].image, prompt)], options)))
        results = tracker.process(window, quantized(dets))
        if keep_images:
            results = [replace(r, image=f.image) for r, f in zip(results, window)]
        return Chunk(results, None, tracker.state())

    for frame in source:
        window.append(frame)
        if len(window) >= tracker.settings.detect_every:
            yield run(window)
            window = []
    if window:
        yield run(window)


def video_predictor(sam2: Any) -> Any:
    """A ``SAM2VideoPredictor``: given as one, or made from a gdino SAM 2 segmenter (same weights)."""
    if sam2 is None:
        raise GdinoError("masks mode needs a SAM 2 model: a segmenter such as sam2.1-hiera-t")
    if hasattr(sam2, "propagate_in_video"):
        return sam2
    model = getattr(sam2, "model", None)
    name = getattr(sam2, "name", "")
    from gdino.segment.sam2_backend import SAM2_CONFIGS  # lazy: the sam2 extra
    from gdino.track.masks import build_video_predictor

    if model is None or name not in SAM2_CONFIGS:
        raise GdinoError(f"masks mode needs a SAM 2 segmenter (sam2.1-hiera-*), got {name or type(sam2).__name__}")
    return build_video_predictor(SAM2_CONFIGS[name], model.state_dict(), next(model.parameters()).device)


def track(
    detector: Detector,
    video: str | os.PathLike,
    prompt_or_classes: PromptInput,
    *,
    mode: str = "boxes",
    options: DetectOptions | None = None,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    bytetrack: ByteTrackSettings | None = None,
    masks: MaskSettings | None = None,
    sam2: Any = None,
    keep_images: bool = False,
    **overrides: Any,
) -> Iterator[FrameTracks]:
    """Track what ``prompt_or_classes`` names through ``video``; yields one :class:`FrameTracks` per
    processed frame, in order.

    Args:
        detector: runs Grounding DINO (its options, refined by ``options``/``overrides``).
        video: a video file, a folder of frames, or a stream URL (``rtsp://``, ``http://``) opened with PyAV.
        prompt_or_classes: a caption (``"a cat . a dog"``) or class names.
        mode: ``"boxes"`` or ``"masks"`` (needs ``sam2``: a SAM 2 segmenter or ``SAM2VideoPredictor``).
        start, end, stride: the source frames to process.
        bytetrack, masks: the trackers' settings.
        keep_images: put each frame's pixels in ``FrameTracks.image`` (for drawing).
    """
    settings = TrackSettings(
        mode, start, end, stride, bytetrack=bytetrack or ByteTrackSettings(), masks=masks or MaskSettings()
    )
    opts = detector.resolve(options, overrides)
    prompt = detector.prompt(prompt_or_classes)
    source = VideoSource(video, settings.frame_range)
    for chunk in iter_chunks(detector, source, prompt, opts, settings, sam2=sam2, keep_images=keep_images):
        yield from chunk.frames
    if source.warning:
        logger.warning("%s: %s", video, source.warning)


def iter_chunks(
    detector: Detector,
    source: VideoSource,
    prompt: Prompt,
    options: DetectOptions,
    settings: TrackSettings,
    *,
    sam2: Any = None,
    tracker: BoxTracker | MaskTracker | None = None,
    keep_images: bool = False,
) -> Iterator[Chunk]:
    """Chunks of tracked frames from ``source`` with a fresh tracker (or ``tracker``, to continue one)."""
    if settings.mode == "boxes":
        if tracker is None:
            tracker = BoxTracker(settings.bytetrack, fps=source.info.fps / settings.stride)
        assert isinstance(tracker, BoxTracker)
        yield from boxes_chunks(detector, source, prompt, options, tracker, settings.chunk, keep_images)
    else:
        if tracker is None:
            tracker = MaskTracker(video_predictor(sam2), settings.masks)
        assert isinstance(tracker, MaskTracker)
        yield from masks_chunks(detector, source, prompt, options, tracker, keep_images)
