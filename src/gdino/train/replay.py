"""Pseudo-label replay against forgetting: before fine-tuning, the starting model labels the classes
it should keep (``data.replay_classes``) on the fine-tuning images, and those boxes join the
annotations, so fine-tuning keeps seeing (and being asked for) the old classes.

The labels are the model's own confident detections (score >= ``data.replay_threshold``, NMS at IoU
0.5, class-wise or, with ``data.replay_nms=agnostic``, across classes: one label per object, the
most confident), minus any that overlap an annotated box (IoU > 0.5: the annotation wins).
The merged COCO file is written once per run folder (atomically) and reused on resume.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import batched_nms, box_iou, nms

from gdino.core.files import read_json, write_json
from gdino.errors import GdinoError
from gdino.eval.annotations import load_coco_gt
from gdino.eval.predict import predict_dataset
from gdino.infer.detector import Detector
from gdino.infer.options import DetectOptions

logger = logging.getLogger(__name__)


def _xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def merge_pseudo_labels(
    data: dict[str, Any],
    results: Sequence[dict[str, Any]],
    category_names: dict[int, str],
    threshold: float,
    iou: float = 0.5,
    class_agnostic: bool = False,
) -> tuple[dict[str, Any], int]:
    """``data`` (COCO) plus the ``results`` (COCO detections over categories ``category_names``)
    scoring >= ``threshold``, after NMS (class-wise, or across classes when ``class_agnostic``)
    and without boxes that overlap an annotation by more than ``iou``. Replayed classes get new category ids unless ``data`` already names them.
    Returns the merged dict and the number of boxes added. Pure: ``data`` is not modified."""
    cats = [dict(c) for c in data["categories"]]
    by_name = {c["name"]: c["id"] for c in cats}
    next_id = max((c["id"] for c in cats), default=0) + 1
    target_id: dict[int, int] = {}
    for rid, name in sorted(category_names.items()):
        if name not in by_name:
            by_name[name] = next_id
            cats.append({"id": next_id, "name": name})
            next_id += 1
        target_id[rid] = by_name[name]
    gt_boxes: dict[int, list[list[float]]] = defaultdict(list)
    for a in data["annotations"]:
        gt_boxes[a["image_id"]].append(_xyxy(a["bbox"]))
    per_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["score"] >= threshold:
            per_image[r["image_id"]].append(r)
    anns = [dict(a) for a in data["annotations"]]
    next_ann = max((a["id"] for a in anns), default=0) + 1
    added = 0
    for image_id in sorted(per_image):
        rows = per_image[image_id]
        boxes = torch.tensor([_xyxy(r["bbox"]) for r in rows], dtype=torch.float32)
        scores = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
        labels = torch.tensor([r["category_id"] for r in rows])
        keep = (nms(boxes, scores, iou) if class_agnostic else batched_nms(boxes, scores, labels, iou)).tolist()
        if gt_boxes[image_id]:
            overlap = box_iou(boxes[keep], torch.tensor(gt_boxes[image_id], dtype=torch.float32)).max(1).values
            keep = [k for k, o in zip(keep, overlap.tolist()) if o <= iou]
        for k in keep:
            x0, y0, x1, y1 = boxes[k].tolist()
            anns.append(
                {
                    "id": next_ann,
                    "image_id": image_id,
                    "category_id": target_id[rows[k]["category_id"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "pseudo": True,
                }
            )
            next_ann += 1
            added += 1
    return {**data, "categories": cats, "annotations": anns}, added


def replay_annotations(
    model: torch.nn.Module,
    train_json: str,
    images_dir: str,
    classes: Sequence[str],
    threshold: float,
    image_size: int,
    out: Path,
    class_agnostic: bool = False,
) -> str:
    """Write ``out`` (once): ``train_json`` plus ``model``'s pseudo-labels of ``classes`` on its images."""
    if out.is_file():
        return str(out)
    if not train_json.endswith(".json"):
        raise GdinoError("data.replay_classes needs COCO training data (data.train = a .json file)")
    data = read_json(train_json, "training annotations")
    replay = {k + 1: name for k, name in enumerate(classes)}
    gt = load_coco_gt(
        {"images": data["images"], "annotations": [], "categories": [{"id": k, "name": n} for k, n in replay.items()]}
    )
    was_training = model.training
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        detector = Detector(model, DetectOptions(box_threshold=threshold, topk=100, image_size=image_size))
        results = predict_dataset(detector, gt, images_dir, progress=False, desc="replay")
    model.train(was_training)
    merged, added = merge_pseudo_labels(data, results, replay, threshold, class_agnostic=class_agnostic)
    logger.info("replay: %d pseudo-labelled boxes of %d classes on %d images", added, len(classes), len(data["images"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    return str(write_json(out, merged, indent=None))


__all__ = ["merge_pseudo_labels", "replay_annotations"]
