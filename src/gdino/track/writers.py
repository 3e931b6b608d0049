"""The outputs of ``gdino track``: ``tracks.json``, MOTChallenge ``mot.txt`` and an annotated ``tracks.mp4``.

All three are rebuilt from the job's journal at the end of a run and replaced atomically.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gdino.core.files import atomic_path, atomic_write_text, write_json
from gdino.track.results import FrameTracks
from gdino.track.source import VideoSource, import_av


def track_summaries(frames: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per track: id, label, first and last frame, frames seen, mean score."""
    tracks: dict[int, dict[str, Any]] = {}
    for f in frames:
        for o in f["objects"]:
            t = tracks.setdefault(
                o["id"], {"id": o["id"], "label": o["label"], "first_frame": f["frame"], "frames": 0, "_s": 0.0}
            )
            t["last_frame"] = f["frame"]
            t["label"] = o["label"]
            t["frames"] += 1
            t["_s"] += o["score"]
    out = []
    for tid in sorted(tracks):
        t = tracks[tid]
        t["mean_score"] = round(t.pop("_s") / t["frames"], 5)
        out.append(t)
    return out


def tracks_document(frames: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """``tracks.json``: the job's header, every processed frame's objects, and a per-track summary."""
    return {**header, "tracks": track_summaries(frames), "frames": frames}


def mot_lines(frames: Iterable[dict[str, Any]]) -> list[str]:
    """MOTChallenge results: ``frame,id,x,y,w,h,conf,-1,-1,-1`` with frames counted from 1."""
    lines = []
    for f in frames:
        for o in f["objects"]:
            x0, y0, x1, y1 = o["box"]
            lines.append(
                f"{f['frame'] + 1},{o['id']},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},{o['score']:.5f},-1,-1,-1"
            )
    return lines


def write_tracks(out: Path, frames: list[dict[str, Any]], header: dict[str, Any]) -> list[Path]:
    """``tracks.json`` and ``mot.txt`` into ``out`` (atomic)."""
    write_json(out / "tracks.json", tracks_document(frames, header), indent=None, separators=(",", ":"))
    atomic_write_text(out / "mot.txt", "".join(line + "\n" for line in mot_lines(frames)))
    return [out / "tracks.json", out / "mot.txt"]


def id_color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread color per track id (golden-ratio hues)."""
    h = (track_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_frame(image: np.ndarray, tracks: FrameTracks, alpha: float = 0.45) -> np.ndarray:
    """The frame with translucent masks, boxes and ``id label`` tags, one color per id."""
    out = image.astype(np.float32)
    for o in tracks.objects:
        if o.mask is not None and o.mask.shape == image.shape[:2]:
            out[o.mask] = out[o.mask] * (1 - alpha) + np.array(id_color(o.track_id), dtype=np.float32) * alpha
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for o in tracks.objects:
        color = id_color(o.track_id)
        x0, y0, x1, y1 = o.xyxy
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=2)
        text = f"{o.track_id} {o.label}"
        tb = draw.textbbox((x0, y0), text, font=font)
        ty = y0 - (tb[3] - tb[1]) - 2 if y0 - (tb[3] - tb[1]) - 2 >= 0 else y0
        draw.rectangle([x0, ty, x0 + tb[2] - tb[0] + 2, ty + tb[3] - tb[1] + 2], fill=color)
        draw.text((x0 + 1, ty), text, fill=(0, 0, 0) if sum(color) > 380 else (255, 255, 255), font=font)
    return np.asarray(canvas)


def annotated_frames(source: VideoSource, frames: dict[int, FrameTracks]) -> Iterator[np.ndarray]:
    """The processed frames of ``source`` drawn with their tracks (the source is decoded again)."""
    for frame in source:
        tracks = frames.get(frame.index)
        if tracks is not None:
            yield draw_frame(frame.image, tracks)


def write_mp4(path: Path, images: Iterable[np.ndarray], fps: float, *, crf: int = 18, container: str = "mp4") -> Path:
    """Encode RGB frames as H.264 (yuv420p, even sizes) into ``path`` atomically (``container``: an FFmpeg format)."""
    av = import_av()
    with atomic_path(path, fsync=False) as tmp:
        output = av.open(str(tmp), mode="w", format=container)
        stream = None
        try:
            for image in images:
                if stream is None:
                    stream = output.add_stream("libx264", rate=max(1, int(round(fps))))
                    stream.width, stream.height = max(2, image.shape[1] // 2 * 2), max(2, image.shape[0] // 2 * 2)
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                crop = np.ascontiguousarray(image[: stream.height, : stream.width])
                for packet in stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")):
                    output.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    output.mux(packet)
        finally:
            output.close()
    return path
