"""RefCOCO / RefCOCO+ / RefCOCOg: top-1 accuracy at IoU >= 0.5 for referring expressions.

Data format: one COCO-style JSON holding ``images``, ``annotations`` and a ``refs`` list, i.e.
the ``instances.json`` of the refer toolkit with its ``refs(<split_by>).p`` pickle stored under
``"refs"``::

    {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", ...}],
     "annotations": [{"id": 5, "image_id": 1, "bbox": [x, y, w, h], "category_id": 1}],
     "refs": [{"ref_id": 0, "image_id": 1, "ann_id": 5, "split": "val",
               "sentences": [{"sent": "the man on the left"}]}]}

``sentences`` may also be plain strings. Every sentence is one sample: the sentence is the prompt
(one "class" whose tokens all count, scored ``sigmoid(logits) @ positive_mapᵀ`` as in the COCO
evaluation), the best-scoring box is the prediction, and it is correct when its IoU with the
referred annotation's box is >= 0.5.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from gdino.core.files import read_json
from gdino.errors import GdinoError, PromptError
from gdino.eval.annotations import check_box
from gdino.eval.predict import image_path
from gdino.ops.boxes import box_iou

logger = logging.getLogger("gdino.eval")


@dataclass(frozen=True)
class RefSample:
    """One referring expression: ``box`` is the target ``[x0, y0, x1, y1]`` in pixels."""

    ref_id: Any
    image_id: int
    expression: str
    box: tuple[float, float, float, float]


def load_refs(source: Any, split: str | None = None, name: str | None = None) -> tuple[dict, list[RefSample]]:
    """The dataset dict and its samples (one per sentence), optionally of one ``split``.

    Raises:
        GdinoError: unreadable file, no ``refs``, a ref naming an unknown image or annotation,
            a bad box, or a split with no refs (the message lists the splits present).
    """
    if isinstance(source, (str, os.PathLike)):
        label, data = name or os.fspath(source), read_json(source, "RefCOCO file")
    else:
        label, data = name or "refs", source
    if not isinstance(data, dict) or not isinstance(data.get("refs"), list):
        raise GdinoError(f"{label}: expected a JSON object with a 'refs' list (see docs/eval.md for the format)")
    images = {img.get("id"): img for img in data.get("images", []) if isinstance(img, dict)}
    anns = {a.get("id"): a for a in data.get("annotations", []) if isinstance(a, dict)}
    samples: list[RefSample] = []
    splits = set()
    for i, ref in enumerate(data["refs"]):
        where = f"{label}: refs[{i}]"
        if not isinstance(ref, dict):
            raise GdinoError(f"{where}: expected an object, got {type(ref).__name__}")
        splits.add(ref.get("split"))
        if split is not None and ref.get("split") != split:
            continue
        if ref.get("image_id") not in images:
            raise GdinoError(f"{where}: image_id {ref.get('image_id')!r} is not in 'images'")
        if "bbox" in ref:
            xywh = check_box(ref["bbox"], where)
        elif ref.get("ann_id") in anns:
            xywh = check_box(anns[ref["ann_id"]].get("bbox"), f"{where} annotation {ref['ann_id']}")
        else:
            raise GdinoError(f"{where}: ann_id {ref.get('ann_id')!r} is not in 'annotations'")
        sentences = ref.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise GdinoError(f"{where}: needs a non-empty 'sentences' list")
        box = (xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3])
        for s in sentences:
            text = s.get("sent", s.get("raw")) if isinstance(s, dict) else s
            if not isinstance(text, str):
                raise GdinoError(f"{where}: a sentence must be a string or {{'sent': str}}, got {s!r}")
            samples.append(RefSample(ref.get("ref_id", i), ref["image_id"], text, box))
    if not samples:
        present = ", ".join(sorted(str(s) for s in splits)) or "none"
        raise GdinoError(
            f"{label}: no referring expressions" + (f" in split {split!r} (splits: {present})" if split else "")
        )
    return data, samples


def clean_expression(text: str) -> str:
    """An expression as a one-class prompt: lower case, "." and "?" removed, spaces collapsed."""
    return " ".join(text.lower().replace(".", " ").replace("?", " ").split())


def top1_accuracy(
    predictions: Sequence[Sequence[float] | None], targets: Sequence[Sequence[float]], iou_threshold: float = 0.5
) -> float:
    """Fraction of predictions (xyxy, None = no prediction) with IoU >= ``iou_threshold``."""
    if len(predictions) != len(targets):
        raise ValueError("one prediction per target is needed")
    if not targets:
        return 0.0
    hits = 0
    for p, t in zip(predictions, targets):
        if p is None:
            continue
        iou, _ = box_iou(torch.tensor([p], dtype=torch.float64), torch.tensor([t], dtype=torch.float64))
        hits += int(iou.item() >= iou_threshold)
    return hits / len(targets)


def predict_refs(
    detector, samples: Sequence[RefSample], images: dict, images_dir, *, progress: bool = True, label: str = "refs"
) -> list[tuple[float, float, float, float] | None]:
    """Top-1 box (xyxy pixels, unclipped) per sample; each image is encoded once for its refs."""
    by_image: dict[int, list[int]] = defaultdict(list)
    for k, s in enumerate(samples):
        by_image[s.image_id].append(k)
    paths = {i: image_path(images_dir, images[i], label) for i in by_image}
    out: list[tuple[float, float, float, float] | None] = [None] * len(samples)
    with tqdm(total=len(samples), unit="expr", desc="refcoco", disable=not progress or None, file=sys.stderr) as bar:
        for image_id, idx in by_image.items():
            prompts, kept = [], []
            for k in idx:
                expr = clean_expression(samples[k].expression)
                try:
                    prompts.append(detector.prompt([expr]))
                    kept.append(k)
                except PromptError as e:  # empty or too long: a miss, not a failed run
                    logger.warning(
                        "ref %s: expression %r counts as a miss: %s", samples[k].ref_id, samples[k].expression, e
                    )
            if prompts:
                found = detector.detect_prompts(str(paths[image_id]), prompts, box_threshold=0.0, topk=1, clip=False)[0]
                for k, dets in zip(kept, found):
                    if len(dets):
                        x0, y0, x1, y1 = (float(v) for v in dets.xyxy[0].tolist())
                        out[k] = (x0, y0, x1, y1)
            bar.update(len(idx))
    return out


def evaluate_refs(
    detector,
    source,
    images_dir,
    *,
    split: str | None = None,
    progress: bool = True,
    iou_threshold: float = 0.5,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Load, predict and score; returns ``{"accuracy", "num_expressions", "split", "predictions"}``.

    ``max_images``: only the expressions of the first N images (ascending id) that have refs.
    """
    data, samples = load_refs(source, split)
    if max_images is not None:
        keep = set(sorted({s.image_id for s in samples})[:max_images])
        samples = [s for s in samples if s.image_id in keep]
    images = {img["id"]: img for img in data.get("images", [])}
    label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "refs"
    preds = predict_refs(detector, samples, images, images_dir, progress=progress, label=label)
    acc = top1_accuracy(preds, [s.box for s in samples], iou_threshold)
    return {
        "accuracy": acc,
        "iou_threshold": iou_threshold,
        "num_expressions": len(samples),
        "split": split,
        "predictions": [
            {
                "ref_id": s.ref_id,
                "image_id": s.image_id,
                "expression": s.expression,
                "box": list(p) if p else None,
                "target": list(s.box),
            }
            for s, p in zip(samples, preds)
        ],
    }
