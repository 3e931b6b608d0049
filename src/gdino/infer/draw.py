"""Drawing detections on an image: boxes, "label score" tags, translucent masks with outlines.

Colors come from a fixed palette of well-separated hues, one per class (or per label text when
there is no class id); tag text is black or white, whichever reads better on the tag color.
Line width and font size scale with the image.
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from gdino.core.detections import Detections

#: Distinct colors (Okabe-Ito and Tableau-like hues), readable on photos.
PALETTE = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (255, 99, 132),
    (54, 162, 235),
    (153, 102, 255),
)


def color_for(detections: Detections, i: int) -> tuple[int, int, int]:
    """The palette color of detection ``i``: by class id, else by label text."""
    cid = int(detections.class_ids[i])
    if cid < 0:
        cid = zlib.crc32(detections.labels[i].encode("utf-8"))
    return PALETTE[cid % len(PALETTE)]


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background`` (relative luminance)."""
    r, g, b = (c / 255.0 for c in background)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return (0, 0, 0) if luminance > 0.5 else (255, 255, 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    detections: Detections,
    *,
    show_scores: bool = True,
    line_width: int | None = None,
    font_size: int | None = None,
    mask_alpha: float = 0.45,
) -> Image.Image:
    """A copy of ``image`` (RGB, original size) with ``detections`` drawn on it.

    Masks (if any) are drawn first as translucent fills with a solid outline, then boxes, then
    tags (``"label 0.87"``) above each box, or inside it when the box touches the top edge.
    """
    canvas = image.convert("RGB").copy()
    w, h = canvas.size
    scale = max(w, h) / 1000.0
    lw = line_width or max(2, round(3 * scale))
    fs = font_size or max(12, round(18 * scale))
    font = _font(fs)

    if detections.masks is not None and len(detections):
        canvas = _draw_masks(canvas, detections, mask_alpha)

    draw = ImageDraw.Draw(canvas)
    order = list(range(len(detections)))[::-1]  # best last, so it ends on top
    boxes = detections.xyxy.tolist()
    for i in order:
        color = color_for(detections, i)
        x0, y0, x1, y1 = boxes[i]
        draw.rectangle([x0, y0, max(x1, x0), max(y1, y0)], outline=color, width=lw)
    for i in order:
        color = color_for(detections, i)
        x0, y0, _, _ = boxes[i]
        label = detections.labels[i] or "?"
        tag = f"{label} {float(detections.scores[i]):.2f}" if show_scores else label
        left, top, right, bottom = draw.textbbox((0, 0), tag, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, lw)
        tx = min(max(x0, 0), max(w - tw - 2 * pad, 0))
        ty = y0 - th - 2 * pad if y0 - th - 2 * pad >= 0 else max(y0, 0)
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=color)
        draw.text((tx + pad - left, ty + pad - top), tag, fill=text_color(color), font=font)
    return canvas


def _draw_masks(canvas: Image.Image, detections: Detections, alpha: float) -> Image.Image:
    if detections.masks is None:
        raise ValueError("no masks to draw")
    base = np.asarray(canvas, dtype=np.float32)
    out = base.copy()
    masks = detections.masks.numpy()
    mh, mw = masks.shape[1:]
    for i in range(len(detections))[::-1]:
        m = masks[i]
        if (mh, mw) != (canvas.height, canvas.width):  # masks at another size: resize nearest
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(canvas.size, Image.Resampling.NEAREST)) > 0
        color = np.array(color_for(detections, i), dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * color
        edge_img = Image.fromarray(m.astype(np.uint8) * 255)
        inner = np.asarray(edge_img.filter(ImageFilter.MinFilter(3))) > 0
        outline = m & ~inner
        thick = max(1, round(max(canvas.size) / 500))
        if thick > 1:
            outline = (
                np.asarray(
                    Image.fromarray(outline.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * (thick // 2) + 1))
                )
                > 0
            )
        out[outline] = color
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
