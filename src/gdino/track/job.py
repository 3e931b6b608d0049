"""``gdino track`` as a resumable job: a video in, ``tracks.json`` / ``mot.txt`` / ``tracks.mp4`` out.

Output folder layout::

    OUT/tracks.json               per frame: id, label, score, box (and mask RLE in masks mode)
    OUT/mot.txt                   MOTChallenge: frame,id,x,y,w,h,conf,-1,-1,-1 (frames from 1)
    OUT/tracks.mp4                with --draw: boxes / translucent masks, "id label", a color per id
    OUT/.gdino-track/job.json     the job's settings (a resume must use the same ones)
    OUT/.gdino-track/journal.jsonl  one line per finished chunk of frames: the source of truth

Resumable: a chunk of frames is appended to the journal with one ``write`` of a whole line once
all its frames are tracked. A run killed at any moment (even ``SIGKILL``) and started again keeps
the journaled chunks, restores the tracker as it was after the last one, and continues with the
next frame, so the outputs equal those of an uninterrupted run:

- boxes mode: ByteTrack is deterministic, so the journaled detections (stored rounded, and the
  tracker is fed the same rounded numbers in every run) are replayed through a new tracker;
- masks mode: each chunk is one window and records the tracker's state (ids, labels, scores,
  last masks as RLE), which is loaded back.

A live stream (``rtsp://``, ...) has no end: Ctrl-C finishes it (the outputs are written with the
chunks done so far), and it cannot be resumed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gdino.core.files import atomic_write_text
from gdino.errors import GdinoError
from gdino.infer.detector import Detector, PromptInput
from gdino.infer.options import DetectOptions
from gdino.label.folder import Journal
from gdino.track.boxes import BoxTracker
from gdino.track.masks import MaskTracker
from gdino.track.results import FrameTracks
from gdino.track.source import InputVideoError, VideoSource
from gdino.track.stream import TrackSettings, detections_from_record, iter_chunks, video_predictor
from gdino.track.writers import annotated_frames, write_mp4, write_tracks

logger = logging.getLogger(__name__)

STATE_DIR = ".gdino-track"
#: options that change how fast a job runs, not what it writes
RUN_ONLY_OPTIONS = ("batch_size",)


@dataclass
class TrackSummary:
    """What a tracking run did."""

    frames: int = 0  # processed frames in the outputs
    tracked: int = 0  # of which in this run
    resumed: int = 0  # of which from an earlier run
    tracks: int = 0
    seconds: float = 0.0
    warning: str | None = None
    outputs: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.tracked / self.seconds if self.seconds > 0 else 0.0
        text = f"tracked {self.tracks} objects through {self.frames} frames"
        if self.resumed:
            text += f" ({self.resumed} from an earlier run)"
        return text + f", {rate:.2f} frames/s"


def track_video(
    detector: Detector,
    video: str | os.PathLike,
    out: str | os.PathLike,
    prompt_or_classes: PromptInput,
    *,
    settings: TrackSettings | None = None,
    options: DetectOptions | None = None,
    sam2: Any = None,
    draw: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> TrackSummary:
    """Track ``prompt_or_classes`` through ``video`` into the folder ``out``, resuming an earlier run.

    Args:
        settings: mode, frame range and tracker settings; recorded in ``job.json``.
        options: detection options (default: the detector's); recorded in ``job.json``.
        sam2: masks mode: a SAM 2 segmenter or ``SAM2VideoPredictor``.
        draw: also write ``tracks.mp4``.
        overwrite: discard an earlier job in ``out`` instead of resuming it.
        extra: more settings for ``job.json`` (e.g. the weights); a resume must match them.

    Raises:
        InputVideoError: the video cannot be read or has no frame in the range.
        GdinoError: ``out`` holds a job with other settings (and ``overwrite`` is False).
    """
    started = time.perf_counter()
    settings = settings or TrackSettings()
    opts = options or detector.options
    source = VideoSource(video, settings.frame_range)
    prompt = detector.prompt(prompt_or_classes)
    out = Path(out)
    info = source.info
    job = {
        "video": str(Path(video).resolve()) if info.kind != "stream" else info.source,
        "mode": prompt.mode,
        "classes": list(prompt.class_names),
        "options": {k: v for k, v in opts.to_dict().items() if k not in RUN_ONLY_OPTIONS},
        "tracking": {k: v for k, v in settings.to_dict().items() if k != "chunk"},  # any chunking replays the same
        **(extra or {}),
    }
    state_dir = out / STATE_DIR
    prepare_state(state_dir, job, overwrite)
    journal = Journal(state_dir / "journal.jsonl")
    chunks = sorted(journal.records.values(), key=lambda r: r["frames"][0]["frame"] if r["frames"] else -1)
    summary = TrackSummary()
    tracker = _restored_tracker(settings, chunks, info.fps, sam2, (info.width, info.height))
    done = [f for c in chunks for f in c["frames"]]
    summary.resumed = len(done)
    if done:
        source.skip_to(done[-1]["frame"] + 1)
    if info.kind == "stream" and done:
        raise GdinoError(
            f"{out} holds an earlier run of a live stream, which cannot be resumed; use --overwrite or another --out"
        )
    total = _expected_frames(info.frames, settings)
    stopped = None
    bar = tqdm(
        total=total,
        initial=len(done),
        unit="frame",
        desc="tracking",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    try:
        for chunk in iter_chunks(detector, source, prompt, opts, settings, sam2=sam2, tracker=tracker):
            frames = [f.to_dict() for f in chunk.frames]
            record: dict[str, Any] = {"file": f"frames {frames[0]['frame']}-{frames[-1]['frame']}", "frames": frames}
            if chunk.detections is not None:
                record["detections"] = chunk.detections
            if chunk.state is not None:
                record["state"] = chunk.state
            journal.add(record)
            done.extend(frames)
            summary.tracked += len(frames)
            bar.update(len(frames))
    except KeyboardInterrupt:
        if info.kind != "stream":
            raise  # a file resumes; a live stream has no end, so Ctrl-C is how it finishes
        stopped = f"stopped by Ctrl-C after {len(done)} frames"
    finally:
        bar.close()
        journal.close()
    summary.warning = source.warning or stopped
    if not done:
        raise InputVideoError(
            f"{video}: no frames to track" + ("" if settings.start == 0 else f" from frame {settings.start}")
        )

    header = {
        "video": job["video"],
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "tracking_mode": settings.mode,
        "classes": job["classes"],
        "settings": job,
    }
    if summary.warning:
        header["warning"] = summary.warning
    outputs = write_tracks(out, done, header)
    if draw:
        by_index = {f["frame"]: FrameTracks.from_dict(f, (info.width, info.height)) for f in done}
        outputs.append(
            write_mp4(
                out / "tracks.mp4",
                annotated_frames(VideoSource(video, settings.frame_range), by_index),
                info.fps / settings.stride,
            )
        )
    summary.outputs = [str(p) for p in outputs]
    summary.frames = len(done)
    summary.tracks = len({o["id"] for f in done for o in f["objects"]})
    summary.seconds = time.perf_counter() - started
    return summary


def _expected_frames(count: int | None, s: TrackSettings) -> int | None:
    if count is None:
        return None
    end = count if s.end is None else min(count, s.end)
    return max(0, -(-(end - s.start) // s.stride))


def _restored_tracker(
    settings: TrackSettings, chunks: list[dict[str, Any]], fps: float, sam2: Any, size: tuple[int, int]
) -> BoxTracker | MaskTracker:
    """A tracker in the state the journaled chunks left it in."""
    if settings.mode == "boxes":
        tracker = BoxTracker(settings.bytetrack, fps=fps / settings.stride)
        for chunk in chunks:
            for frame, rec in zip(chunk["frames"], chunk["detections"]):
                replayed = tracker.update(detections_from_record(rec, size))
                if [o.track_id for o in replayed] != [o["id"] for o in frame["objects"]]:
                    raise GdinoError(
                        "the journal does not replay to the same tracks (changed tracker version?); "
                        "use --overwrite to start over"
                    )
        return tracker
    masks = MaskTracker(video_predictor(sam2), settings.masks)
    if chunks:
        masks.restore(chunks[-1]["state"])
    return masks


def prepare_state(state: Path, job: dict[str, Any], overwrite: bool) -> None:
    """Create the job folder, or check that an earlier job there has the same settings."""
    job_file = state / "job.json"
    if overwrite and state.exists():
        for name in ("journal.jsonl", "job.json"):
            (state / name).unlink(missing_ok=True)
    wanted = json.loads(json.dumps(job))
    if job_file.exists():
        try:
            old = json.loads(job_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != wanted:
            key = next(
                (k for k in sorted(set(old or {}) | set(wanted)) if (old or {}).get(k) != wanted.get(k)), "job.json"
            )
            raise GdinoError(
                f"{state.parent} holds a tracking job with other settings ({key} differs); "
                "use --overwrite to start over, or another --out"
            )
        return
    state.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_file, json.dumps(job, indent=2, ensure_ascii=False))
