"""Video sources: frames streamed one at a time from a video file, a live stream or a folder of frames.

Video files and streams are decoded with PyAV (FFmpeg), frame by frame: a source never holds more
than the frame being handed out, so a long video costs no more memory than a short one, and no
pre-split JPEG folder is needed. A folder of frames (``000001.jpg``, ...) is read in natural
sort order. ``start``/``end``/``stride`` pick source frames ``start, start + stride, ... < end``;
frame indices always count every frame of the source from 0.

A video that stops decoding part-way (a truncated download, a corrupt packet) ends the stream at
the last readable frame and sets a one-line :attr:`VideoSource.warning` (logged by
:func:`gdino.track.track`, printed by ``gdino track``); a source that cannot be
opened, has no video stream, uses a codec this FFmpeg build cannot decode, or yields no frame at
all raises :class:`gdino.errors.InputVideoError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gdino.core.images import find_images, load_image
from gdino.errors import GdinoError, InputImageError


class InputVideoError(GdinoError):
    """A video source cannot be read (missing, not a video, unsupported codec, no frames)."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``index`` counts every source frame from 0; ``image`` is ``HxWx3`` uint8 RGB."""

    index: int
    image: np.ndarray = field(repr=False)
    time: float | None = None  # seconds from the start of the video (None for folders without a rate)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a source before decoding it."""

    source: str
    kind: str  # "video", "stream" or "frames"
    width: int
    height: int
    fps: float  # frames per second (the container's average rate; 30 for folders)
    frames: int | None  # frames in the source when the container says so (None for live streams)
    codec: str = ""


@dataclass(frozen=True)
class FrameRange:
    """Which source frames to process: ``start, start + stride, ...`` below ``end`` (None: to the end)."""

    start: int = 0
    end: int | None = None
    stride: int = 1

    def __post_init__(self) -> None:
        if self.start < 0 or self.stride < 1 or (self.end is not None and self.end <= self.start):
            raise GdinoError(
                f"bad frame range start={self.start} end={self.end} stride={self.stride}: "
                "need start >= 0, stride >= 1 and end > start"
            )

    def wants(self, index: int) -> bool:
        return (
            index >= self.start and (index - self.start) % self.stride == 0 and (self.end is None or index < self.end)
        )

    def done(self, index: int) -> bool:
        return self.end is not None and index >= self.end


def is_stream_url(source: str) -> bool:
    """``rtsp://...``, ``http://...`` and other FFmpeg URLs (opened as live streams)."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) is not None


class VideoSource:
    """Frames of a video file, a stream URL or a folder of images, decoded lazily.

    Iterating yields :class:`Frame` objects for the frames ``frame_range`` selects; iterating
    again starts over (streams cannot be rewound). ``skip_to`` makes the next iteration drop
    frames below an index without converting them to arrays (used when a job resumes).
    """

    def __init__(self, source: str | os.PathLike, frame_range: FrameRange | None = None) -> None:
        self.source = str(source)
        self.range = frame_range or FrameRange()
        self.warning: str | None = None
        self.decoded = 0  # frames handed out by the last iteration
        self._skip_below = 0
        path = Path(self.source)
        if is_stream_url(self.source):
            self.info = self._probe_video(self.source, "stream")
        elif path.is_dir():
            self._files = find_images(path)
            self._files.sort(key=lambda p: _natural_key(p.relative_to(path).as_posix()))
            if not self._files:
                raise InputVideoError(f"{path}: a folder with no frames (looked for .jpg, .png, ...)")
            first = load_image(self._files[0])
            self.info = VideoInfo(self.source, "frames", first.width, first.height, 30.0, len(self._files))
        elif path.exists():
            self.info = self._probe_video(self.source, "video")
        else:
            raise InputVideoError(f"video not found: {path}")

    def skip_to(self, index: int) -> None:
        """The next iteration starts at the first selected frame at or after ``index``."""
        self._skip_below = max(0, int(index))

    def __iter__(self) -> Iterator[Frame]:
        self.decoded = 0
        self.warning = None
        frames = self._iter_folder() if self.info.kind == "frames" else self._iter_video()
        for frame in frames:
            self.decoded += 1
            yield frame

    # ------------------------------------------------------------------ folders
    def _iter_folder(self) -> Iterator[Frame]:
        for index, file in enumerate(self._files):
            if self.range.done(index):
                return
            if index < self._skip_below or not self.range.wants(index):
                continue
            try:
                img = load_image(file).image
            except InputImageError as e:
                self.warning = f"frame {index} unreadable ({e}); stopped there"
                return
            arr = np.asarray(img)
            if (arr.shape[1], arr.shape[0]) != (self.info.width, self.info.height):
                self.warning = f"frame {index} ({file.name}) has another size than frame 0; stopped there"
                return
            yield Frame(index, arr, index / self.info.fps)

    # ------------------------------------------------------------------ video files and streams
    def _open(self, source: str):
        av = import_av()
        try:
            return av.open(source, mode="r", timeout=10.0 if is_stream_url(source) else None)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise InputVideoError(f"{source}: cannot open as a video ({_short(e)})") from None

    def _probe_video(self, source: str, kind: str) -> VideoInfo:
        container = self._open(source)
        try:
            if not container.streams.video:
                raise InputVideoError(f"{source}: no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            name = stream.codec_context.name if ctx is not None else ""
            if ctx is None or not name or name == "none":
                raise InputVideoError(f"{source}: unsupported video codec (this FFmpeg build cannot decode it)")
            rate = stream.average_rate or stream.guessed_rate or 30
            width, height = int(ctx.width), int(ctx.height)
            if width <= 0 or height <= 0:
                raise InputVideoError(f"{source}: the video stream has no frame size (unsupported codec?)")
            frames = int(stream.frames) if stream.frames else None
            if frames is None and container.duration and kind == "video":  # e.g. Matroska: from the duration
                frames = int(round(container.duration / 1_000_000 * float(rate)))
            return VideoInfo(source, kind, width, height, float(rate), frames, name)
        finally:
            container.close()

    def _iter_video(self) -> Iterator[Frame]:
        av = import_av()
        container = self._open(self.source)
        index = -1
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            base = stream.time_base
            decoder = container.decode(stream)
            while True:
                try:
                    frame = next(decoder)
                except StopIteration:
                    break
                except (av.FFmpegError, OSError, ValueError) as e:
                    self.warning = f"decoding stopped after frame {index} ({_short(e)}); tracked up to there"
                    return
                index += 1
                if self.range.done(index):
                    return
                if index < self._skip_below or not self.range.wants(index):
                    continue
                if (frame.width, frame.height) != (self.info.width, self.info.height):
                    self.warning = f"frame {index} changes size to {frame.width}x{frame.height}; stopped there"
                    return
                t = float(frame.pts * base) if frame.pts is not None and base is not None else index / self.info.fps
                yield Frame(index, frame.to_ndarray(format="rgb24"), t)
        finally:
            container.close()
        expected = self.info.frames
        if self.info.kind != "video" or not expected or self.warning is not None:
            return
        last_wanted = expected if self.range.end is None else min(expected, self.range.end)
        if index + 1 < last_wanted:
            self.warning = f"the video ended after {index + 1} of {expected} frames (truncated?); tracked up to there"


def import_av():
    """PyAV, or a one-line error saying how to install it."""
    try:
        import av  # lazy: an optional extra ([video])
    except ImportError as e:
        raise GdinoError("video input needs PyAV: pip install 'gdino[video]'") from e
    return av


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]
