"""COCO detection JSON -> :class:`gdino.data.records.Annotations`.

Category ids may be any integers (COCO's own run 1..90 with gaps); classes are the categories
sorted by id, and ``Annotations.category_ids`` maps a class index back to its id. Checked up front,
each with one error naming the file: unreadable JSON, missing sections, duplicate or missing
category ids, annotations naming an unknown category or image, malformed boxes. Crowd annotations
(``iscrowd=1``) are skipped for training, as in DETR. Boxes are clamped to the image, degenerate ones
dropped, and both counted in one warning.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import torch

from gdino.core.files import read_json
from gdino.data.records import Annotations, BoxReport, ImageRecord, sanitize_boxes
from gdino.errors import GdinoError, PromptError
from gdino.text.captions import clean_class_name

logger = logging.getLogger(__name__)


def load_coco(ann_file: str | os.PathLike) -> Annotations:
    """Read a COCO detection file into records (xyxy pixel boxes, class indices)."""
    source = str(ann_file)
    data = read_json(ann_file, "annotation file")
    if not isinstance(data, dict):
        raise GdinoError(f"{source}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise GdinoError(f"{source}: no '{key}' list; is this a COCO detection file?")
    classes, category_ids = _categories(data["categories"], source)
    index_of = {cid: i for i, cid in enumerate(category_ids)}

    images: dict[int, dict] = {}
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not all(key in img for key in ("id", "file_name", "height", "width")):
            raise GdinoError(f"{source}: images[{k}] needs 'id', 'file_name', 'height' and 'width'")
        if img["id"] in images:
            raise GdinoError(f"{source}: image id {img['id']} appears twice in 'images'")
        images[img["id"]] = img

    per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in images}
    unknown_cats: Counter[object] = Counter()
    unknown_images: Counter[object] = Counter()
    crowd = 0
    for k, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict):
            raise GdinoError(f"{source}: annotations[{k}] is not an object")
        cid, iid = ann.get("category_id"), ann.get("image_id")
        if cid not in index_of:
            unknown_cats[cid] += 1
            continue
        if iid not in per_image:
            unknown_images[iid] += 1
            continue
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise GdinoError(
                f"{source}: annotation {ann.get('id', k)} has bbox {bbox!r}; expected [x, y, width, height]"
            )
        x, y, w, h = (float(v) for v in bbox)
        per_image[iid].append(([x, y, x + w, y + h], index_of[cid]))
    if unknown_cats:
        raise GdinoError(
            f"{source}: {sum(unknown_cats.values())} annotations use category ids missing from "
            f"'categories': {_counts(unknown_cats)}; known ids: {_id_range(category_ids)}"
        )
    if unknown_images:
        raise GdinoError(
            f"{source}: {sum(unknown_images.values())} annotations refer to image ids missing from "
            f"'images': {_counts(unknown_images)}"
        )

    records: list[ImageRecord] = []
    report = BoxReport()
    for iid, img in images.items():
        anns = per_image[iid]
        boxes = torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a[1] for a in anns], dtype=torch.long)
        height, width = _size(img, source)
        boxes, keep, rep = sanitize_boxes(boxes, width, height)
        report.add(rep)
        records.append(ImageRecord(int(iid), str(img["file_name"]), height, width, boxes, labels[keep]))
    report.log(source)
    if crowd:
        logger.info("%s: skipped %d crowd annotations (iscrowd=1)", source, crowd)
    return Annotations(records, classes, category_ids, source)


def _categories(cats: list, source: str) -> tuple[list[str], list[int]]:
    if not cats:
        raise GdinoError(f"{source}: 'categories' is empty; a detection dataset needs at least one class")
    by_id: dict[int, str] = {}
    for k, cat in enumerate(cats):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise GdinoError(f"{source}: categories[{k}] needs an 'id' and a 'name'")
        cid = cat["id"]
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise GdinoError(f"{source}: category {cat['name']!r} has id {cid!r}; ids must be integers")
        if cid in by_id:
            raise GdinoError(f"{source}: category id {cid} is used twice ({by_id[cid]!r}, {cat['name']!r})")
        try:
            by_id[cid] = clean_class_name(cat["name"])
        except PromptError as e:
            raise GdinoError(f"{source}: category {cid}: {e}") from e
    ids = sorted(by_id)
    names = [by_id[i] for i in ids]
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise GdinoError(f"{source}: several categories share the name(s) {dup[:5]}; class names must differ")
    return names, ids


def _size(img: dict, source: str) -> tuple[int, int]:
    h, w = img["height"], img["width"]
    if not (_is_number(h) and _is_number(w) and h > 0 and w > 0):
        raise GdinoError(f"{source}: image {img['id']} has size {w!r}x{h!r}; expected positive numbers")
    return int(h), int(w)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _counts(counter: Counter) -> str:
    items = ", ".join(f"{k!r} ({n}x)" for k, n in counter.most_common(8))
    return items + (", ..." if len(counter) > 8 else "")


def _id_range(ids: list[int]) -> str:
    return f"{len(ids)} ids from {ids[0]} to {ids[-1]}" if ids else "none"
