"""Running a model over a COCO-format dataset the way the official evaluation does.

:func:`predict_dataset` builds one class prompt from every category name (``"a . b . c ."``,
split into several passes when it exceeds 256 tokens, the image encoded once for all of them),
scores each (query, class) pair as ``sigmoid(logits) @ positive_mapᵀ``, keeps the ``topk`` best
pairs per image (official: 300) and scales the boxes to the original image size, unclipped. All
of that is :class:`gdino.infer.detector.Detector` with ``topk`` set and ``box_threshold=0``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gdino.errors import InputImageError
from gdino.eval.annotations import category_names

logger = logging.getLogger("gdino.eval")


def image_path(images_dir: str | os.PathLike, image: dict, label: str = "annotations") -> Path:
    """Where the file of a COCO ``images`` entry is.

    ``file_name`` under ``images_dir``; without one (LVIS), the last part of ``coco_url``, tried
    as ``images_dir/<split>/<name>`` (e.g. ``val2017/000000397133.jpg``) and ``images_dir/<name>``.

    Raises:
        InputImageError: no candidate exists (the message names the image id and the paths).
    """
    root = Path(images_dir)
    candidates: list[Path] = []
    if image.get("file_name"):
        candidates.append(root / image["file_name"])
    url = image.get("coco_url") or image.get("flickr_url")
    if url:
        parts = str(url).rstrip("/").split("/")
        if len(parts) >= 2:
            candidates.append(root / parts[-2] / parts[-1])
        candidates.append(root / parts[-1])
    if not candidates:
        raise InputImageError(f"{label}: image id {image.get('id')} has neither 'file_name' nor 'coco_url'")
    for c in candidates:
        if c.is_file():
            return c
    tried = " or ".join(str(c) for c in candidates)
    raise InputImageError(f"{label}: image id {image.get('id')}: file not found ({tried})")


def predict_dataset(
    detector,
    gt,
    images_dir: str | os.PathLike,
    *,
    image_ids: Sequence[int] | None = None,
    progress: bool = True,
    label: str = "annotations",
    desc: str = "evaluating",
) -> list[dict[str, Any]]:
    """Detections for every image of ``gt`` (a ``COCO``) as COCO results (full-precision floats).

    Args:
        detector: a :class:`gdino.infer.detector.Detector`; its options apply (the official
            protocol is :data:`gdino.eval.evaluator.EVAL_DETECT`: ``topk=300``, no threshold).
        images_dir: the folder the images' ``file_name`` are relative to.
        image_ids: a subset of images (default: all, ascending id).

    Raises:
        InputImageError: a missing or unreadable image (checked for all images before running).
    """
    ids = sorted(gt.getImgIds()) if image_ids is None else list(image_ids)
    paths = {i: image_path(images_dir, gt.imgs[i], label) for i in ids}
    cat_ids, names = category_names(gt)
    prompt = detector.prompt(names)
    logger.info("%d images, %d categories in %d prompt pass(es)", len(ids), len(names), len(prompt.chunks))
    results: list[dict[str, Any]] = []
    with tqdm(total=len(ids), unit="img", desc=desc, disable=not progress or None, file=sys.stderr) as bar:
        for image_id, dets in detector.run((i, str(paths[i]), prompt) for i in ids):
            results.extend(detections_to_results(dets, image_id, cat_ids))
            bar.update(1)
    return results


def detections_to_results(dets, image_id: int, category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """A :class:`gdino.core.detections.Detections` -> COCO result dicts (``xywh``, unrounded)."""
    out = []
    boxes = dets.xyxy.tolist()
    for (x0, y0, x1, y1), score, cid in zip(boxes, dets.scores.tolist(), dets.class_ids.tolist()):
        if cid < 0:
            continue
        out.append(
            {
                "image_id": image_id,
                "category_id": int(category_ids[cid]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
            }
        )
    return out
