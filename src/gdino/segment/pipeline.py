"""``segment``: images + a prompt -> detections with instance masks (Grounded-SAM).

Each image is loaded once: the detector (:class:`gdino.infer.detector.Detector`, under its own
dtype/autocast) finds the boxes, then the segmenter embeds the same RGB pixels once and decodes
all of the image's boxes in one batched call. An image without boxes gets empty masks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gdino.infer.detections import Detections
from gdino.infer.detector import DecodeOptions, Detector, as_image_list


def segment(
    model,
    images: Any,
    prompt_or_classes: str | Sequence[str] | Sequence[str | Sequence[str]],
    segmenter: Any,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    *,
    per_image: bool = False,
    batch_size: int = 1,
    dtype: Any = "fp32",
    image_size: Any = None,
    remove_combined: bool = True,
    topk: int | None = None,
    nms: float | None = None,
    clip: bool = True,
    max_pixels: int | None = None,
    multimask: bool | None = None,
) -> list[Detections]:
    """Detect what ``prompt_or_classes`` names, then mask every box; one ``Detections`` per image.

    Args:
        model: a ``GroundingDINO`` (``gdino.load_model``).
        images, prompt_or_classes, box_threshold, text_threshold, per_image, batch_size, dtype,
            image_size, remove_combined, topk, nms, clip: as :func:`gdino.infer.detector.detect`
            (``dtype`` is the detector's precision only).
        segmenter: from :func:`gdino.segment.build_segmenter`, or a segmenter name (released
            weights from the cache, on the model's device).
        max_pixels: refuse larger images (None: the detector's default limit).
        multimask: override the segmenter's ``multimask`` for this call.
    Returns:
        Detections with ``masks`` ``[N, H, W]`` bool at the original size and ``mask_scores``
        (the segmenter's predicted IoU); ``scores`` stay the detector's.
    """
    if isinstance(segmenter, str):
        from gdino.segment.build import build_segmenter

        segmenter = build_segmenter(segmenter, device=model.device)
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    detector = Detector(model, batch_size=batch_size, dtype=dtype, image_size=image_size, **kwargs)
    opts = DecodeOptions(box_threshold, text_threshold, remove_combined, topk, nms, clip)
    items = as_image_list(images)
    prompts = detector.prompts_for(prompt_or_classes, len(items), per_image)
    results: list[Detections | None] = [None] * len(items)
    for index, dets in run_segment(detector, segmenter, ((i, img, p) for i, (img, p) in enumerate(zip(items, prompts))), opts, multimask):
        results[index] = dets
    return results  # type: ignore[return-value]


def run_segment(detector: Detector, segmenter: Any, items, opts: DecodeOptions, multimask: bool | None = None) -> Iterator[tuple[Any, Detections]]:
    """Streaming core: ``(key, image, prompt)`` -> ``(key, Detections with masks)``, as they finish."""
    prepared: dict[Any, Any] = {}

    def remember():
        for key, image, prompt in items:
            p = detector.prepare(image)
            prepared[key] = p
            yield key, p, prompt

    old = getattr(segmenter, "multimask", None)
    if multimask is not None:
        segmenter.multimask = bool(multimask)
    try:
        for key, dets in detector.run(remember(), opts):
            p = prepared.pop(key)
            yield key, segmenter.segment(np.asarray(p.loaded.image), dets)
    finally:
        if multimask is not None:
            segmenter.multimask = old
