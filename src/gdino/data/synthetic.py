"""A synthetic grounding dataset: colored, textured shapes on a noisy background.

Every shape is annotated with its class (``"red circle"``, ``"blue striped square"``); classes absent
from an image serve as negative prompt classes during training. Grounding records carry captions
such as ``"a red circle left of a blue square."`` whose mentions are the regions' phrase spans.
Boxes are tight around the drawn pixels and shapes never overlap. Output is deterministic from the
seed (image ``i`` depends only on ``(seed, i)``).

Layout of ``OUT`` (``--format both``, the default)::

    images/000000.png ...
    train.json, val.json                      COCO detection (category ids 1..C)
    train.jsonl, val.jsonl, label_map.json    ODVG detection records, label map 0..C-1
    train_grounding.jsonl, val_grounding.jsonl   ODVG grounding records (same images)

``python -m gdino.data.synthetic OUT --num-images 100 --size 256 --seed 0 [--format coco|odvg|both]``
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gdino.data.synthetic_formats import coco_json, odvg_detection, odvg_grounding, write_json, write_jsonl
from gdino.errors import GdinoError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 215, 30),
    "purple": (140, 50, 190),
    "orange": (245, 125, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
TEXTURES = ("plain", "striped", "dotted")
#: Color of stripes and dots.
PATTERN_RGB = (245, 245, 245)


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    Attributes:
        num_images: images in total (train + val).
        size: image side in pixels (square images).
        seed: everything follows from it.
        colors, shapes, textures: the class vocabulary; a class is ``color [texture] shape`` (no
            word for "plain").
        min_objects, max_objects: shapes per image.
        min_scale, max_scale: shape size as a fraction of the image side.
        val_fraction: the last ``round(num_images * val_fraction)`` images form the val split.
        formats: any of "coco", "odvg".
        background: "blotches" (gray with a gradient and 8-pixel blotches) or "textured" (random
            colored waves and speckle).
        noise: standard deviation of Gaussian pixel noise added to the whole image (0-255 scale).
        distractors: up to this many unannotated gray blobs per image (drawn before the shapes).
    """

    num_images: int = 100
    size: int = 256
    seed: int = 0
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    textures: tuple[str, ...] = ("plain", "striped")
    min_objects: int = 1
    max_objects: int = 4
    min_scale: float = 0.15
    max_scale: float = 0.35
    val_fraction: float = 0.2
    formats: tuple[str, ...] = ("coco", "odvg")
    background: str = "blotches"
    noise: float = 0.0
    distractors: int = 0

    def __post_init__(self) -> None:
        for name, allowed, values in (
            ("color", COLORS, self.colors),
            ("shape", SHAPES, self.shapes),
            ("texture", TEXTURES, self.textures),
            ("format", ("coco", "odvg"), self.formats),
        ):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise GdinoError(f"unknown or no {name}(s) {bad}; choose from {', '.join(allowed)}")
        if self.num_images < 1 or self.size < 32:
            raise GdinoError("need num_images >= 1 and size >= 32")
        if not 1 <= self.min_objects <= self.max_objects:
            raise GdinoError("need 1 <= min_objects <= max_objects")
        if not 0 < self.min_scale <= self.max_scale < 1:
            raise GdinoError("need 0 < min_scale <= max_scale < 1")
        if not 0 <= self.val_fraction < 1:
            raise GdinoError("val_fraction must be in [0, 1)")
        if self.background not in ("blotches", "textured"):
            raise GdinoError(f"unknown background {self.background!r}; choose blotches or textured")
        if self.noise < 0 or self.distractors < 0:
            raise GdinoError("noise and distractors must be >= 0")


@dataclass(frozen=True)
class Shape:
    """One drawn object: class index and tight xyxy box in pixels (exclusive right/bottom)."""

    label: int
    box: tuple[int, int, int, int]


def class_names(cfg: SyntheticConfig) -> list[str]:
    """``color [texture] shape`` for every combination, in a fixed order."""
    return [
        f"{c} {s}" if t == "plain" else f"{c} {t} {s}" for c in cfg.colors for t in cfg.textures for s in cfg.shapes
    ]


def _class_parts(cfg: SyntheticConfig) -> list[tuple[str, str, str]]:
    return [(c, t, s) for c in cfg.colors for t in cfg.textures for s in cfg.shapes]


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """``[side, side]`` bool mask of a shape filling its square."""
    img = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(img)
    m = side - 1
    if shape == "circle":
        d.ellipse([0, 0, m, m], fill=1)
    elif shape == "square":
        d.rectangle([0, 0, m, m], fill=1)
    elif shape == "triangle":
        d.polygon([(m / 2, 0), (m, m), (0, m)], fill=1)
    elif shape == "diamond":
        d.polygon([(m / 2, 0), (m, m / 2), (m / 2, m), (0, m / 2)], fill=1)
    elif shape == "cross":
        a, b = round(m / 3), round(2 * m / 3)
        d.rectangle([a, 0, b, m], fill=1)
        d.rectangle([0, a, m, b], fill=1)
    elif shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, m / 2, m / 5)
        pts = [(m / 2 + r * np.cos(a), m / 2 - r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]
        d.polygon(pts, fill=1)
    return np.asarray(img, dtype=bool)


def _texture(texture: str, side: int) -> np.ndarray:
    """``[side, side]`` bool: True where the pattern color replaces the shape color."""
    yy, xx = np.mgrid[0:side, 0:side]
    period = max(4, side // 5)
    if texture == "striped":
        return ((xx + yy) % period) < period // 2
    if texture == "dotted":
        r = period / 4
        return ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) <= r * r
    return np.zeros((side, side), dtype=bool)


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    """A gray background with a gentle gradient and 8x8-pixel blotches (cheap to draw and to store)."""
    gray = int(rng.integers(80, 170))
    ramp = (np.linspace(-15, 15, n) * rng.uniform(-1, 1)).astype(np.int16)
    blocks = rng.integers(-8, 9, size=(-(-n // 8), -(-n // 8)), dtype=np.int16)
    noise = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:n, :n]
    gray_map = np.clip(gray + ramp[None, :] + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(gray_map[:, :, None], (n, n, 3)))


def _textured_background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two random colors mixed by crossed sine waves, plus 4-pixel colored speckle."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    fx, fy, phase = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
    mix = (0.5 + 0.25 * np.sin(2 * np.pi * fx * xx + phase) + 0.25 * np.sin(2 * np.pi * fy * yy))[..., None]
    a, b = rng.integers(40, 200, size=3), rng.integers(40, 200, size=3)
    blocks = rng.integers(-20, 21, size=(-(-n // 4), -(-n // 4), 3))
    speckle = np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:n, :n]
    return np.clip(a * mix + b * (1 - mix) + speckle, 0, 255).astype(np.uint8)


def _distractors(image: np.ndarray, count: int, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
    """Unannotated gray ellipses and polygons (in place)."""
    n = cfg.size
    for _ in range(count):
        side = int(rng.integers(max(4, round(cfg.min_scale * n)), round(cfg.max_scale * n) + 1))
        x0, y0 = int(rng.integers(0, n - side + 1)), int(rng.integers(0, n - side + 1))
        blob = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(blob)
        if rng.random() < 0.5:
            draw.ellipse([0, 0, side - 1, int(rng.integers(side // 2, side))], fill=1)
        else:
            draw.polygon([tuple(p) for p in rng.integers(0, side, size=(5, 2)).tolist()], fill=1)
        mask = np.asarray(blob, dtype=bool)
        image[y0 : y0 + side, x0 : x0 + side][mask] = int(rng.integers(60, 200))


def render_image(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[Shape]]:
    """One ``[size, size, 3]`` uint8 image and its shapes (non-overlapping, boxes tight)."""
    n = cfg.size
    image = _background(n, rng) if cfg.background == "blotches" else _textured_background(n, rng)
    if cfg.distractors:
        _distractors(image, int(rng.integers(0, cfg.distractors + 1)), cfg, rng)
    parts = _class_parts(cfg)
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    shapes: list[Shape] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        label = int(rng.integers(len(parts)))
        color, texture, shape = parts[label]
        for _try in range(30):
            side = int(rng.integers(round(cfg.min_scale * n), round(cfg.max_scale * n) + 1))
            x0, y0 = int(rng.integers(0, n - side + 1)), int(rng.integers(0, n - side + 1))
            cand = (x0 - 2, y0 - 2, x0 + side + 2, y0 + side + 2)
            if all(cand[2] <= t[0] or t[2] <= cand[0] or cand[3] <= t[1] or t[3] <= cand[1] for t in taken):
                break
        else:
            continue
        mask = _shape_mask(shape, side)
        patch = image[y0 : y0 + side, x0 : x0 + side]
        patch[mask] = COLORS[color]
        patch[mask & _texture(texture, side)] = PATTERN_RGB
        ys, xs = np.nonzero(mask)
        taken.append((x0, y0, x0 + side, y0 + side))
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        shapes.append(Shape(label, box))
    if cfg.noise > 0:
        image = np.clip(image + rng.normal(0.0, cfg.noise, image.shape), 0, 255).astype(np.uint8)
    return image, shapes


def caption_for(
    shapes: Sequence[Shape], names: Sequence[str], rng: np.random.Generator
) -> tuple[str, list[list[tuple[int, int]]]]:
    """A caption relating consecutive shapes, and each shape's mention spans.

    ``"a red circle left of a blue square. a blue square above a green star."``: relations are
    "left of"/"right of" when the horizontal offset dominates, else "above"/"below".
    """
    order = rng.permutation(len(shapes)).tolist()
    spans: list[list[tuple[int, int]]] = [[] for _ in shapes]
    text = ""

    def mention(k: int) -> None:
        nonlocal text
        text += "a "
        spans[k].append((len(text), len(text) + len(names[shapes[k].label])))
        text += names[shapes[k].label]

    if len(order) == 1:
        mention(order[0])
        return text + ".", spans
    for a, b in zip(order[:-1], order[1:], strict=True):
        if text:
            text += " "
        mention(a)
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = shapes[a].box, shapes[b].box
        dx, dy = (bx0 + bx1 - ax0 - ax1) / 2, (by0 + by1 - ay0 - ay1) / 2
        if abs(dx) >= abs(dy):
            text += " left of " if dx > 0 else " right of "
        else:
            text += " above " if dy > 0 else " below "
        mention(b)
        text += "."
    return text, spans


def generate(out_dir: str | os.PathLike, cfg: SyntheticConfig = SyntheticConfig()) -> dict[str, str]:
    """Write the dataset under ``out_dir``; returns ``{name: path}`` of the annotation files."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = class_names(cfg)
    n_val = int(round(cfg.num_images * cfg.val_fraction))
    n_train = cfg.num_images - n_val
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for i in range(cfg.num_images):
        rng = np.random.default_rng([cfg.seed, i])
        image, shapes = render_image(cfg, rng)
        file_name = f"images/{i:06d}.png"
        Image.fromarray(image).save(out / file_name, compress_level=1)
        caption, spans = caption_for(shapes, names, rng) if shapes else ("", [])
        splits["train" if i < n_train else "val"].append(
            {"id": i, "file_name": file_name, "shapes": shapes, "caption": caption, "spans": spans}
        )

    written: dict[str, str] = {}
    for split, items in splits.items():
        if not items:
            continue
        if "coco" in cfg.formats:
            written[f"{split}_coco"] = write_json(out / f"{split}.json", coco_json(items, names, cfg.size))
        if "odvg" in cfg.formats:
            written[f"{split}_odvg"] = write_jsonl(out / f"{split}.jsonl", odvg_detection(items, names, cfg.size))
            written[f"{split}_grounding"] = write_jsonl(
                out / f"{split}_grounding.jsonl", odvg_grounding(items, names, cfg.size)
            )
    if "odvg" in cfg.formats:
        written["label_map"] = write_json(out / "label_map.json", {str(i): n for i, n in enumerate(names)})
    return written


def _csv(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gdino.data.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("coco", "odvg", "both"), default="both")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--colors", type=_csv, default=SyntheticConfig.colors, help="comma-separated")
    p.add_argument("--shapes", type=_csv, default=SyntheticConfig.shapes, help="comma-separated")
    p.add_argument("--textures", type=_csv, default=SyntheticConfig.textures, help="comma-separated")
    p.add_argument(
        "--variant",
        default=None,
        help="a named generator variant (shapes, textured, crowded); --num-images, --seed, "
        "--val-fraction and --format apply, the other options come from the variant",
    )
    args = p.parse_args(argv)
    try:
        formats = ("coco", "odvg") if args.format == "both" else (args.format,)
        if args.variant:
            from gdino.data.synthetic_variants import variant_config  # the variants import this module

            cfg = variant_config(
                args.variant,
                num_images=args.num_images,
                seed=args.seed,
                val_fraction=args.val_fraction,
                formats=formats,
            )
        else:
            cfg = SyntheticConfig(
                num_images=args.num_images,
                size=args.size,
                seed=args.seed,
                colors=args.colors,
                shapes=args.shapes,
                textures=args.textures,
                max_objects=args.max_objects,
                val_fraction=args.val_fraction,
                formats=formats,
            )
        written = generate(args.out, cfg)
    except GdinoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cfg.num_images} images, {len(class_names(cfg))} classes -> {args.out}")
    for name, path in written.items():
        print(f"  {name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
