"""A generated tracking video with ground truth: colored shapes that move, cross, occlude each
other, leave the frame and enter it.

The shapes and the background are drawn like the ``smoke`` training set
(:mod:`gdino.data.synthetic`), so a detector trained with the ``smoke`` preset can see them.
Every object has its own class (``"red circle"``, ``"blue striped square"``); objects are drawn in a
fixed depth order, so when two cross the lower one is hidden where they overlap. The ground truth
box of an object is the tight box of its *visible* pixels; an object with less than
``min_visible`` of its pixels in view is absent from that frame's ground truth (as MOTChallenge
ignores heavily occluded boxes).

``python -m gdino.track.synthetic OUT [--frames 90] [--width 160] [--height 128] [--objects 4] [--seed 0]``
writes::

    OUT/video.mp4     H.264 (or OUT/frames/000001.png ... with --frames-folder)
    OUT/gt.txt        MOTChallenge ground truth: frame,id,x,y,w,h,1,class,visibility (frames from 1)
    OUT/meta.json     the classes (one per object id), size, fps and the generator settings
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gdino.core.files import atomic_path, atomic_write_text, write_json
from gdino.data.synthetic import COLORS, PATTERN_RGB, _background, _shape_mask, _texture
from gdino.errors import GdinoError
from gdino.track.writers import write_mp4


@dataclass(frozen=True)
class VideoSpec:
    """What to generate (everything follows from ``seed``).

    Attributes:
        frames, width, height, fps: the video.
        objects: shapes in the video (each its own class, at most ``len(colors) * len(shapes)``).
        min_side, max_side: shape sizes in pixels.
        min_speed, max_speed: pixels per frame.
        min_visible: fraction of an object's pixels that must be visible for a ground-truth box.
        colors, shapes, textures: the class vocabulary (the ``smoke`` preset's by default).
    """

    frames: int = 90
    width: int = 160
    height: int = 128
    fps: float = 15.0
    objects: int = 4
    seed: int = 0
    min_side: int = 26
    max_side: int = 36
    min_speed: float = 1.0
    max_speed: float = 2.5
    min_visible: float = 0.3
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    textures: tuple[str, ...] = ("plain",)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.width < 32 or self.height < 32 or self.fps <= 0:
            raise GdinoError("need frames >= 1, width and height >= 32 and fps > 0")
        if not 1 <= self.objects <= min(len(self.colors), len(self.shapes)) * len(self.textures):
            raise GdinoError(
                f"objects must be between 1 and {min(len(self.colors), len(self.shapes)) * len(self.textures)}"
            )
        if not 4 <= self.min_side <= self.max_side < min(self.width, self.height):
            raise GdinoError("need 4 <= min_side <= max_side < the frame's shorter side")


@dataclass(frozen=True)
class GroundTruth:
    """One visible object in one frame: ``box`` is xyxy in pixels (right/bottom exclusive)."""

    frame: int  # 0-based
    track_id: int  # from 1
    label: str
    box: tuple[int, int, int, int]
    visibility: float


@dataclass
class _Mover:
    label: str
    color: str
    texture: str
    shape: str
    side: int
    x: float
    y: float
    vx: float
    vy: float
    enter: int  # first frame it moves (it waits off-screen before)
    leave: int  # from this frame on it stops bouncing and drifts out


def class_of(color: str, texture: str, shape: str) -> str:
    return f"{color} {shape}" if texture == "plain" else f"{color} {texture} {shape}"


def _movers(spec: VideoSpec, rng: np.random.Generator) -> list[_Mover]:
    # distinct colors and shapes per object, so every object is its own class
    colors = [spec.colors[i] for i in rng.permutation(len(spec.colors))]
    shapes = [spec.shapes[i] for i in rng.permutation(len(spec.shapes))]
    out = []
    for i in range(spec.objects):
        color, shape = colors[i % len(colors)], shapes[i % len(shapes)]
        texture = spec.textures[(i // min(len(colors), len(shapes))) % len(spec.textures)]
        side = int(rng.integers(spec.min_side, spec.max_side + 1))
        speed = float(rng.uniform(spec.min_speed, spec.max_speed))
        angle = float(rng.uniform(0, 2 * np.pi))
        x = float(rng.uniform(0, spec.width - side))
        y = float(rng.uniform(0, spec.height - side))
        vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        enter, leave = 0, spec.frames + 1
        if spec.objects >= 3 and i == spec.objects - 1:  # the last one enters from the left a while in
            enter, x, vx = spec.frames // 4, float(-side), abs(vx) + 0.5
        if spec.objects >= 2 and i == 0:  # the first one leaves the frame in the second half
            leave = spec.frames // 2
        out.append(_Mover(class_of(color, texture, shape), color, texture, shape, side, x, y, vx, vy, enter, leave))
    return out


def _step(m: _Mover, t: int, spec: VideoSpec) -> None:
    if t < m.enter:
        return
    m.x += m.vx
    m.y += m.vy
    if t >= m.leave:
        return
    inside_x = m.enter == 0 or m.x >= 0  # an entering object bounces only once fully inside
    if inside_x and (m.x < 0 or m.x + m.side > spec.width):
        m.vx = -m.vx
        m.x = min(max(m.x, 0.0), float(spec.width - m.side))
    if m.y < 0 or m.y + m.side > spec.height:
        m.vy = -m.vy
        m.y = min(max(m.y, 0.0), float(spec.height - m.side))


def generate_frames(spec: VideoSpec) -> Iterator[tuple[np.ndarray, list[GroundTruth]]]:
    """``(frame HxWx3 uint8, ground truth)`` for every frame, in order."""
    rng = np.random.default_rng(spec.seed)
    movers = _movers(spec, rng)
    big = _background(max(spec.width, spec.height), rng)
    background = np.ascontiguousarray(big[: spec.height, : spec.width])
    masks = {m.label: _shape_mask(m.shape, m.side) for m in movers}
    patterns = {m.label: _texture(m.texture, m.side) for m in movers}
    for t in range(spec.frames):
        image = background.copy()
        owner = np.zeros((spec.height, spec.width), dtype=np.int16)  # 0: background, k: object k
        totals = {}
        for k, m in enumerate(movers, start=1):  # later objects are drawn on top
            if t < m.enter and m.enter > 0:
                continue
            x0, y0 = int(round(m.x)), int(round(m.y))
            mask, pattern = masks[m.label], patterns[m.label]
            totals[k] = int(mask.sum())
            ix0, iy0 = max(x0, 0), max(y0, 0)
            ix1, iy1 = min(x0 + m.side, spec.width), min(y0 + m.side, spec.height)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            sub = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            pat = pattern[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            region = image[iy0:iy1, ix0:ix1]
            region[sub] = COLORS[m.color]
            region[sub & pat] = PATTERN_RGB
            owner[iy0:iy1, ix0:ix1][sub] = k
        truth = []
        for k, m in enumerate(movers, start=1):
            if k not in totals:
                continue
            ys, xs = np.nonzero(owner == k)
            vis = len(xs) / totals[k]
            if len(xs) and vis >= spec.min_visible:
                box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
                truth.append(GroundTruth(t, k, m.label, box, round(vis, 3)))
        yield image, truth
        for m in movers:
            _step(m, t, spec)


def class_names(spec: VideoSpec) -> list[str]:
    """The class of each object, in track id order (id 1 first)."""
    return [m.label for m in _movers(spec, np.random.default_rng(spec.seed))]


def mot_lines(truth: list[GroundTruth], class_ids: dict[str, int]) -> list[str]:
    """MOTChallenge ground-truth lines (``frame,id,x,y,w,h,1,class,visibility``; frames from 1)."""
    return [
        f"{g.frame + 1},{g.track_id},{g.box[0]},{g.box[1]},{g.box[2] - g.box[0]},{g.box[3] - g.box[1]},1,"
        f"{class_ids[g.label]},{g.visibility}"
        for g in truth
    ]


def generate_video(spec: VideoSpec, out: str | Path, *, frames_folder: bool = False) -> dict:
    """Write the video (or a folder of PNG frames), ``gt.txt`` and ``meta.json`` into ``out``."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = class_names(spec)
    ids = {n: i + 1 for i, n in enumerate(names)}
    lines: list[str] = []

    def images() -> Iterator[np.ndarray]:
        for t, (image, truth) in enumerate(generate_frames(spec)):
            lines.extend(mot_lines(truth, ids))
            if frames_folder:
                (out / "frames").mkdir(exist_ok=True)
                with atomic_path(out / "frames" / f"{t + 1:06d}.png", fsync=False) as tmp:
                    Image.fromarray(image).save(tmp, format="PNG")
            yield image

    if frames_folder:
        for _ in images():
            pass
        video = out / "frames"
    else:
        video = write_mp4(out / "video.mp4", images(), spec.fps)
    atomic_write_text(out / "gt.txt", "".join(line + "\n" for line in lines))
    meta = {
        "video": video.name,
        "classes": names,
        "width": spec.width // 2 * 2,
        "height": spec.height // 2 * 2,
        "fps": spec.fps,
        "frames": spec.frames,
        "spec": asdict(spec),
    }
    write_json(out / "meta.json", meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a generated tracking video with MOTChallenge ground truth.")
    p.add_argument("out")
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--objects", type=int, default=4)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames-folder", action="store_true", help="PNG frames instead of an mp4")
    a = p.parse_args(argv)
    try:
        spec = VideoSpec(frames=a.frames, width=a.width, height=a.height, objects=a.objects, fps=a.fps, seed=a.seed)
        meta = generate_video(spec, a.out, frames_folder=a.frames_folder)
    except GdinoError as e:
        print(f"gdino.track.synthetic: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {meta['frames']} frames of {', '.join(meta['classes'])} to {a.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
