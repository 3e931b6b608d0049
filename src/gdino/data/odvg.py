"""ODVG JSONL (Open-GroundingDino's training format) -> :class:`gdino.data.records.Annotations`.

One JSON object per line, with ``filename``, ``height``, ``width`` and one of:

- ``"detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 0, "category": "cat"}, ...]}``
  with a label map file ``{"0": "cat", "1": "dog", ...}`` (keys 0..C-1);
- ``"grounding": {"caption": "...", "regions": [{"bbox": [...], "phrase": "...",
  "tokens_positive": [[start, end], ...]}, ...]}``; ``bbox`` may also be a list of boxes
  (MM-Grounding-DINO's variant) and ``tokens_positive`` may be left out when the phrase occurs
  verbatim in the caption (its first occurrence is used).

The label map is checked: keys must be exactly 0..C-1 (a 1-based map is the classic cause of a mAP
near 0 after fine-tuning, so it is an error with the fix in the message), every instance label must
be in it, and an instance's ``category`` must match the map's name for its label. Without a label
map the classes are taken from the instances' ``label``/``category`` pairs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from gdino.core.files import read_json
from gdino.data.prompts import normalize_caption_spans
from gdino.data.records import Annotations, BoxReport, ImageRecord, Span, sanitize_boxes
from gdino.errors import GdinoError, PromptError
from gdino.text.captions import clean_class_name

logger = logging.getLogger(__name__)


def load_label_map(label_map: str | os.PathLike | Mapping, source: str = "label map") -> list[str]:
    """A label map (file path or dict ``{"0": name, ...}``) -> class names, index = label.

    Raises:
        GdinoError: keys that are not integers, a 1-based map, missing ids, or bad names.
    """
    if not isinstance(label_map, Mapping):
        source = str(label_map)
        label_map = read_json(label_map)
        if not isinstance(label_map, dict):
            raise GdinoError(f'{source}: a label map is a JSON object like {{"0": "cat", "1": "dog"}}')
    if not label_map:
        raise GdinoError(f"{source}: the label map is empty")
    by_id: dict[int, str] = {}
    for key, name in label_map.items():
        try:
            cid = int(key)
        except (TypeError, ValueError):
            raise GdinoError(f"{source}: label map key {key!r} is not an integer id") from None
        try:
            by_id[cid] = clean_class_name(name)
        except PromptError as e:
            raise GdinoError(f"{source}: label {cid}: {e}") from e
    ids = sorted(by_id)
    n = len(ids)
    if ids == list(range(1, n + 1)):
        raise GdinoError(
            f"{source}: the label map is 1-based (ids 1..{n}) but ODVG labels start at 0: renumber "
            f"the map to 0..{n - 1} and subtract 1 from every instance 'label'"
        )
    if ids != list(range(n)):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        shown = missing[:10] + (["..."] if len(missing) > 10 else [])
        raise GdinoError(
            f"{source}: label map ids must be 0..{n - 1} without gaps; missing {shown}"
            + (f", negative ids {[i for i in ids if i < 0]}" if ids[0] < 0 else "")
        )
    return [by_id[i] for i in range(n)]


def load_odvg(ann_file: str | os.PathLike, label_map: str | os.PathLike | Mapping | None = None) -> Annotations:
    """Read an ODVG JSONL file (detection and/or grounding records)."""
    source = str(ann_file)
    lines = _read_lines(ann_file)
    classes = load_label_map(label_map) if label_map is not None else None
    raw_det: list[tuple[int, dict, list[dict]]] = []
    records: list[ImageRecord | None] = []
    report = BoxReport()
    unlocated = 0
    for lineno, rec in lines:
        where = f"{source}:{lineno}"
        if not all(k in rec for k in ("filename", "height", "width")):
            raise GdinoError(f"{where}: a record needs 'filename', 'height' and 'width'")
        height, width = int(rec["height"]), int(rec["width"])
        if height <= 0 or width <= 0:
            raise GdinoError(f"{where}: image size {width}x{height} is not positive")
        if "detection" in rec:
            instances = (rec["detection"] or {}).get("instances") or []
            raw_det.append((len(records), rec, instances))
            records.append(None)  # filled once the classes are known
        elif "grounding" in rec:
            record, rep, bad = _grounding_record(len(records), rec, where)
            report.add(rep)
            unlocated += bad
            records.append(record)
        else:
            raise GdinoError(f"{where}: the record has neither 'detection' nor 'grounding'")

    if raw_det:
        if classes is None:
            classes = _classes_from_instances(raw_det, source)
            logger.info("%s: no label map given; %d classes taken from the instances", source, len(classes))
        _check_instances(raw_det, classes, source)
        for index, rec, instances in raw_det:
            boxes = torch.tensor([_box(i["bbox"], source) for i in instances], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([int(i["label"]) for i in instances], dtype=torch.long)
            boxes, keep, rep = sanitize_boxes(boxes, int(rec["width"]), int(rec["height"]))
            report.add(rep)
            records[index] = ImageRecord(
                index, str(rec["filename"]), int(rec["height"]), int(rec["width"]), boxes, labels[keep]
            )
    report.log(source)
    if unlocated:
        logger.warning(
            "%s: %d grounding regions were dropped: no tokens_positive and the phrase is not in the caption",
            source,
            unlocated,
        )
    classes = classes or []
    return Annotations([r for r in records if r is not None], classes, list(range(len(classes))), source)


def _read_lines(ann_file) -> list[tuple[int, dict]]:
    p = Path(ann_file)
    if not p.is_file():
        raise GdinoError(f"annotation file {p} does not exist")
    out: list[tuple[int, dict]] = []
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise GdinoError(f"{p}:{lineno}: not a JSON object: {e}") from e
            if not isinstance(rec, dict):
                raise GdinoError(f"{p}:{lineno}: expected a JSON object per line")
            out.append((lineno, rec))
    return out


def _box(bbox, where: str) -> list[float]:
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
        raise GdinoError(f"{where}: bbox {bbox!r} is not [x1, y1, x2, y2]")
    try:
        return [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise GdinoError(f"{where}: bbox {bbox!r} is not [x1, y1, x2, y2]") from None


def _classes_from_instances(raw_det, source: str) -> list[str]:
    names: dict[int, str] = {}
    for _, _, instances in raw_det:
        for inst in instances:
            label, cat = inst.get("label"), inst.get("category")
            if not isinstance(label, int) or cat is None:
                raise GdinoError(
                    f"{source}: without a label map every instance needs an integer 'label' and a "
                    f"'category'; got {inst!r}"
                )
            cat = clean_class_name(cat)
            if names.setdefault(label, cat) != cat:
                raise GdinoError(f"{source}: label {label} is both {names[label]!r} and {cat!r}")
    if not names:
        raise GdinoError(f"{source}: detection records without instances and no label map: no classes")
    try:
        return load_label_map({str(k): v for k, v in names.items()}, f"{source} (labels of its instances)")
    except GdinoError as e:
        raise GdinoError(f"{e}; pass the dataset's label map file if some classes have no instances") from e


def _check_instances(raw_det, classes: list[str], source: str) -> None:
    out_of_range: Counter[int] = Counter()
    mismatched: list[tuple[int, str]] = []
    for _, _, instances in raw_det:
        for inst in instances:
            label = inst.get("label")
            if not isinstance(label, int) or isinstance(label, bool):
                raise GdinoError(f"{source}: instance label {label!r} is not an integer: {inst!r}")
            if not 0 <= label < len(classes):
                out_of_range[label] += 1
                continue
            cat = inst.get("category")
            if cat is not None and " ".join(str(cat).lower().split()) != classes[label]:
                mismatched.append((label, " ".join(str(cat).lower().split())))
    if out_of_range:
        hint = " (the labels look 1-based)" if len(classes) in out_of_range else ""
        raise GdinoError(
            f"{source}: instance labels outside the label map's 0..{len(classes) - 1}{hint}: "
            + ", ".join(f"{k} ({n}x)" for k, n in out_of_range.most_common(8))
        )
    if mismatched:
        shifted = all(0 < lab <= len(classes) and classes[lab - 1] == cat for lab, cat in mismatched)
        label, cat = mismatched[0]
        hint = "; every mismatch matches label-1, so the labels are 1-based: subtract 1 from each" if shifted else ""
        raise GdinoError(
            f"{source}: {len(mismatched)} instances' 'category' disagrees with the label map, e.g. label "
            f"{label} is {classes[label]!r} in the map but {cat!r} in the instance{hint}"
        )


def _grounding_record(index: int, rec: dict, where: str) -> tuple[ImageRecord, BoxReport, int]:
    g = rec["grounding"] or {}
    caption = g.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise GdinoError(f"{where}: a grounding record needs a non-empty 'caption'")
    groups: dict[tuple[Span, ...], int] = {}
    boxes: list[list[float]] = []
    labels: list[int] = []
    unlocated = 0
    for k, region in enumerate(g.get("regions") or []):
        spans = _region_spans(region, caption, f"{where} region {k}")
        if spans is None:
            unlocated += 1
            continue
        key = tuple(sorted(spans))
        phrase = groups.setdefault(key, len(groups))
        bbox = region.get("bbox")
        many = isinstance(bbox, (list, tuple)) and bbox and isinstance(bbox[0], (list, tuple))
        for b in bbox if many else [bbox]:
            boxes.append(_box(b, where))
            labels.append(phrase)
    # Phrases in caption order; labels renumbered to match.
    order = sorted(groups, key=lambda spans: spans[0])
    renumber = {groups[key]: i for i, key in enumerate(order)}
    caption, phrase_spans = normalize_caption_spans(caption, [list(key) for key in order])
    height, width = int(rec["height"]), int(rec["width"])
    box_t, keep, report = sanitize_boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), width, height)
    label_t = torch.tensor([renumber[lab] for lab in labels], dtype=torch.long)[keep]
    record = ImageRecord(index, str(rec["filename"]), height, width, box_t, label_t, caption, phrase_spans)
    return record, report, unlocated


def _region_spans(region: dict, caption: str, where: str) -> list[Span] | None:
    spans = region.get("tokens_positive")
    if spans:
        if isinstance(spans[0], (list, tuple)) and spans[0] and isinstance(spans[0][0], (list, tuple)):
            spans = [s for group in spans for s in group]  # per-box lists (MM-GDINO): merge
        out: list[Span] = []
        for s in spans:
            if not (isinstance(s, (list, tuple)) and len(s) == 2 and 0 <= s[0] < s[1] <= len(caption)):
                raise GdinoError(f"{where}: tokens_positive {s!r} is not a [start, end) span of the caption")
            out.append((int(s[0]), int(s[1])))
        return out
    phrase = region.get("phrase")
    if not isinstance(phrase, str) or not phrase.strip():
        return None
    start = caption.lower().find(phrase.strip().lower())
    if start < 0:
        return None
    return [(start, start + len(phrase.strip()))]
