"""Reading and checking COCO-format ground truth and detection results, with one-line errors.

- :func:`load_coco_gt`: a COCO ``instances.json`` (path, dict or ``pycocotools.coco.COCO``) ->
  a checked ``COCO`` object. Missing ``area`` becomes ``w * h`` and missing ``iscrowd`` 0, so
  LVIS and hand-made files work too.
- :func:`load_detections`: a COCO results list (path or list of dicts) checked against the
  ground truth: every entry needs ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` and
  ``score``, with ids the ground truth knows.

Every problem raises :class:`gdino.errors.GdinoError` naming the file and the entry.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from gdino.core.files import read_json
from gdino.errors import GdinoError


def quiet_coco(dataset: Mapping) -> Any:
    """A ``pycocotools.coco.COCO`` built from a dict, without its prints."""
    from pycocotools.coco import COCO  # optional ([eval]): only COCO scoring needs it

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco_gt(source: Any, name: str | None = None) -> Any:
    """A checked ``pycocotools.coco.COCO`` from a path, a dict or a ``COCO`` object.

    Raises:
        GdinoError: unreadable file, missing sections, bad or duplicate ids, bad boxes,
            annotations pointing at unknown images or categories.
    """
    from pycocotools.coco import COCO  # optional ([eval]): only COCO scoring needs it

    if isinstance(source, COCO):
        dataset, label = copy.deepcopy(source.dataset), name or "annotations"
    elif isinstance(source, Mapping):
        dataset, label = copy.deepcopy(dict(source)), name or "annotations"
    elif isinstance(source, (str, os.PathLike)):
        dataset, label = read_json(source, "annotation file"), name or os.fspath(source)
    else:
        raise GdinoError(f"ground truth must be a path, a dict or a COCO object, got {type(source).__name__}")
    check_gt(dataset, label)
    return quiet_coco(dataset)


def check_gt(dataset: Any, label: str) -> None:
    """Validate (and complete in place) a COCO ground-truth dict; see :func:`load_coco_gt`."""
    if not isinstance(dataset, dict):
        raise GdinoError(
            f"{label}: expected a JSON object with images/annotations/categories, got {type(dataset).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise GdinoError(f"{label}: missing the {key!r} list (not a COCO annotation file?)")
        if not isinstance(dataset[key], list):
            raise GdinoError(f"{label}: {key!r} must be a list, got {type(dataset[key]).__name__}")
    image_ids = _unique_ids(dataset["images"], "images", label)
    cat_ids = _unique_ids(dataset["categories"], "categories", label)
    for i, cat in enumerate(dataset["categories"]):
        if not isinstance(cat.get("name"), str) or not cat["name"].strip():
            raise GdinoError(f"{label}: categories[{i}] (id {cat['id']}) has no name")
    _unique_ids(dataset["annotations"], "annotations", label)
    for i, ann in enumerate(dataset["annotations"]):
        where = f"{label}: annotations[{i}] (id {ann['id']})"
        if ann.get("image_id") not in image_ids:
            raise GdinoError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in cat_ids:
            raise GdinoError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
        ann["bbox"] = check_box(ann.get("bbox"), where)
        if "area" not in ann:
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        ann.setdefault("iscrowd", 0)


def load_detections(source: Any, gt: Any, name: str | None = None) -> list[dict]:
    """Checked detection results (path or list of dicts) for the ground truth ``gt`` (a ``COCO``).

    Returns new dicts holding only ``image_id``, ``category_id``, ``bbox`` (floats) and ``score``.

    Raises:
        GdinoError: unreadable file, not a list, a missing or bad field, or an image or category
            id that the ground truth does not have (naming the entry).
    """
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        data = read_json(source, "detections file")
    else:
        label, data = name or "detections", source
    if isinstance(data, dict) and "annotations" in data:
        data = data["annotations"]  # a COCO-style file whose annotations carry scores
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise GdinoError(f"{label}: detections must be a JSON list of results, got {type(data).__name__}")
    image_ids, cat_ids = set(gt.getImgIds()), set(gt.getCatIds())
    out = []
    for i, det in enumerate(data):
        where = f"{label}: entry {i}"
        if not isinstance(det, Mapping):
            raise GdinoError(f"{where}: expected an object, got {type(det).__name__}")
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in det:
                raise GdinoError(f"{where}: missing {key!r}")
        if det["image_id"] not in image_ids:
            raise GdinoError(f"{where}: image_id {det['image_id']!r} is not in the ground truth's images")
        if det["category_id"] not in cat_ids:
            raise GdinoError(f"{where}: category_id {det['category_id']!r} is not in the ground truth's categories")
        score = det["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise GdinoError(f"{where}: score must be a finite number, got {score!r}")
        out.append(
            {
                "image_id": det["image_id"],
                "category_id": det["category_id"],
                "bbox": check_box(det["bbox"], where),
                "score": float(score),
            }
        )
    return out


def check_box(box: Any, where: str) -> list[float]:
    """``[x, y, w, h]`` as 4 finite floats with ``w, h >= 0``, else a :class:`GdinoError`."""
    ok = isinstance(box, (list, tuple)) and len(box) == 4
    if ok:
        try:
            vals = [float(v) for v in box]
        except (TypeError, ValueError):
            ok = False
        else:
            ok = all(math.isfinite(v) for v in vals) and not any(isinstance(v, bool) for v in box)
    if not ok:
        raise GdinoError(f"{where}: bbox must be 4 finite numbers [x, y, width, height], got {box!r}")
    if vals[2] < 0 or vals[3] < 0:
        raise GdinoError(f"{where}: bbox has a negative width or height: {box!r}")
    return vals


def category_names(gt: Any) -> tuple[list[int], list[str]]:
    """Category ids (ascending) and their prompt names (``_`` -> space, ``.``/``?`` removed).

    LVIS names such as ``"bottle_cap"`` become ``"bottle cap"``; a name left empty keeps its id.
    """
    ids = sorted(gt.getCatIds())
    names = []
    for cid in ids:
        raw = gt.cats[cid]["name"]
        cleaned = " ".join(raw.replace("_", " ").replace(".", " ").replace("?", " ").split())
        names.append(cleaned or f"category {cid}")
    return ids, names


def _unique_ids(items: list, key: str, label: str) -> set:
    ids = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise GdinoError(f"{label}: {key}[{i}] must be an object, got {type(item).__name__}")
        if "id" not in item:
            raise GdinoError(f"{label}: {key}[{i}] has no 'id'")
        value = item["id"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise GdinoError(f"{label}: {key}[{i}] id must be an integer, got {value!r}")
        if value in ids:
            raise GdinoError(f"{label}: {key}[{i}] repeats id {value}")
        ids.add(value)
    return ids
