"""The records of labeled images and the dataset files built from them.

A *record* is one image's result as JSON: ``{"file", "width", "height", "detections": [{"box",
"score", "class_id", ["mask", "mask_area", "mask_score"]}]}`` or ``{"file", "error"}`` for an
image that could not be read. The single-process labeler appends records to a journal, the Ray
engine writes them into shards; both build the dataset with :func:`write_dataset`, so the same
records give the same files whichever engine produced them.

Ordering (documented in docs/scale.md): images are numbered 1..N in the order of their relative
paths (``find_images``), annotations 1..M image by image, in each image's detection order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gdino.core.detections import Detections
from gdino.core.files import atomic_write_text
from gdino.core.rle import encode_mask
from gdino.label.yolo import write_yolo

logger = logging.getLogger(__name__)


def detection_record(name: str, dets: Detections) -> dict[str, Any]:
    """One labeled image as a JSON record (boxes to 0.01 px, scores to 1e-5)."""
    w, h = dets.image_size
    items = []
    for i in range(len(dets)):
        d: dict[str, Any] = {
            "box": [round(v, 2) for v in dets.xyxy[i].tolist()],
            "score": round(float(dets.scores[i]), 5),
            "class_id": int(dets.class_ids[i]),
        }
        if dets.masks is not None:
            d["mask"] = encode_mask(dets.masks[i].numpy())
            d["mask_area"] = int(dets.masks[i].sum())
        if dets.mask_scores is not None:
            d["mask_score"] = round(float(dets.mask_scores[i]), 5)
        items.append(d)
    return {"file": name, "width": w, "height": h, "detections": items}


def error_record(name: str, error: str) -> dict[str, Any]:
    """An image that could not be read, with the reason."""
    return {"file": name, "error": error}


def coco_document(
    names: Sequence[str],
    records: dict[str, dict[str, Any]],
    class_names: Sequence[str],
    image_root: str,
    job: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The COCO document and the skipped list of the records of ``names`` (in that order)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for name in names:
        rec = records.get(name)
        if rec is None:
            continue
        if "error" in rec:
            skipped.append({"file": rec["file"], "reason": rec["error"]})
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rec["file"], "width": rec["width"], "height": rec["height"]})
        for d in rec["detections"]:
            x0, y0, x1, y1 = d["box"]
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": d["class_id"] + 1,
                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(max(x1 - x0, 0) * max(y1 - y0, 0), 2),
                "iscrowd": 0,
                "score": d["score"],
            }
            if "mask" in d:
                ann["segmentation"] = d["mask"]
                ann["area"] = d.get("mask_area", ann["area"])
            if "mask_score" in d:
                ann["mask_score"] = d["mask_score"]
            annotations.append(ann)
    coco = {
        "info": {
            "description": "labeled by gdino label",
            "image_root": image_root,
            "date_created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "settings": job,
        },
        "images": images,
        "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(class_names)],
        "annotations": annotations,
    }
    return coco, skipped


def write_dataset(
    out: Path,
    image_root: str,
    names: Sequence[str],
    records: dict[str, dict[str, Any]],
    class_names: Sequence[str],
    formats: Sequence[str],
    job: dict[str, Any],
) -> list[str]:
    """Write ``annotations.json``, ``skipped.json`` (and the YOLO layout) from the records of
    ``names`` (relative paths in folder order, see the module docstring); returns the paths written.

    Args:
        image_root: the folder ``names`` are relative to (absolute path or a filesystem URI).
    """
    coco, skipped = coco_document(names, records, class_names, image_root, job)
    written = [out / "annotations.json", out / "skipped.json"]
    atomic_write_text(out / "annotations.json", json.dumps(coco, ensure_ascii=False))
    atomic_write_text(out / "skipped.json", json.dumps(skipped, indent=1, ensure_ascii=False))
    if "yolo" in formats:
        written += write_yolo(out, Path(image_root), coco["images"], coco["annotations"], list(class_names))
    return [str(p) for p in written]
