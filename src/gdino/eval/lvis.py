"""LVIS box AP with the federated rules and Fixed AP: :func:`score_lvis`.

Federated rules (as the ``lvis`` package's ``LVISEval``):

- a detection of category c in image i counts only if c is annotated in i or listed in the
  image's ``neg_category_ids``; others are dropped (we do not know whether c is there);
- an unmatched detection of a category in ``not_exhaustive_category_ids`` is ignored;
- ``APr / APc / APf`` average over the rare / common / frequent categories (``frequency``).

Fixed AP ("Evaluating Large-Vocabulary Object Detectors", Dave et al. 2021): no per-image limit
in the evaluator; instead each category keeps its ``topk_per_class`` (10,000) best detections
across the whole dataset (:func:`limit_per_class`).

The matching and accumulation are pycocotools' (the ``lvis`` package copies them); a small
:class:`FederatedCOCOeval` subclass adds the two federated rules. The ``lvis`` package itself is
not needed (its release fails on numpy >= 1.24); tests hold this module to it.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

from gdino.errors import GdinoError
from gdino.eval.annotations import load_coco_gt, load_detections
from gdino.eval.coco import DetectionMetrics, metrics_from_eval, run_cocoeval, summarize

logger = logging.getLogger("gdino.eval")

FREQUENCIES = ("r", "c", "f")

#: Detections per category kept across the dataset by Fixed AP.
FIXED_AP_TOPK = 10_000


def limit_per_class(detections: Sequence[dict], k: int = FIXED_AP_TOPK) -> list[dict]:
    """Keep each category's ``k`` highest-scoring detections over the whole dataset.

    Ties keep the earlier entry; the result keeps the input order.
    """
    by_cat: dict[Any, list[int]] = defaultdict(list)
    for i, d in enumerate(detections):
        by_cat[d["category_id"]].append(i)
    keep: list[int] = []
    for idx in by_cat.values():
        if len(idx) > k:
            scores = np.array([detections[i]["score"] for i in idx], dtype=np.float64)
            order = np.argsort(-scores, kind="stable")[:k]
            idx = [idx[j] for j in order]
        keep.extend(idx)
    return [detections[i] for i in sorted(keep)]


class FederatedCOCOeval(COCOeval):
    """pycocotools' ``COCOeval`` with LVIS's federated detection filtering and ignoring."""

    def _prepare(self):  # noqa: D401 - pycocotools hook
        super()._prepare()
        images = self.cocoGt.imgs
        present: dict[int, set] = defaultdict(set)
        for ann in self.cocoGt.dataset["annotations"]:
            present[ann["image_id"]].add(ann["category_id"])
        self._not_exhaustive = {i: set(images[i].get("not_exhaustive_category_ids", ())) for i in images}
        for key in list(self._dts):
            img, cat = key
            if cat not in present[img] and cat not in set(images[img].get("neg_category_ids", ())):
                del self._dts[key]

    def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802,N803 - pycocotools names
        res = super().evaluateImg(imgId, catId, aRng, maxDet)
        if res is not None and catId in self._not_exhaustive.get(imgId, ()):
            res["dtIgnore"] = np.logical_or(res["dtIgnore"], res["dtMatches"] == 0)
        return res


def score_lvis(
    gt: Any,
    detections: Any,
    *,
    topk_per_class: int | None = FIXED_AP_TOPK,
    max_dets_per_image: int | None = None,
    image_ids: Sequence[int] | None = None,
    backend: str = "pycocotools",
) -> DetectionMetrics:
    """LVIS box AP (Fixed AP by default) of ``detections`` against an LVIS annotation file.

    Args:
        gt: LVIS ``*.json`` path, dict or ``COCO`` (images need ``neg_category_ids`` and
            ``not_exhaustive_category_ids``; categories ``frequency`` in r/c/f).
        detections: results path or list (as :func:`gdino.eval.coco.score_coco`).
        topk_per_class: Fixed AP's per-category cap over the dataset (None: no cap).
        max_dets_per_image: the old LVIS protocol's per-image cap (300); None: no cap (Fixed AP).
        backend: ``"pycocotools"`` (with :class:`FederatedCOCOeval`) or ``"faster-coco-eval"``
            (its ``lvis_style`` mode: same numbers, much faster on the 1,203 LVIS classes).
    """
    coco_gt = load_coco_gt(gt)
    check_lvis_fields(coco_gt)
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(set(image_ids))
    keep = set(ids)
    dets = [d for d in load_detections(detections, coco_gt) if d["image_id"] in keep]
    if max_dets_per_image is not None:
        dets = limit_per_image(dets, max_dets_per_image)
    if topk_per_class is not None:
        dets = limit_per_class(dets, topk_per_class)
    per_image_cap = max(len(dets), 1)
    ev = run_cocoeval(
        coco_gt.dataset,
        dets,
        backend=backend,
        max_dets=(per_image_cap,),
        image_ids=ids,
        evaluator=_federated_evaluator(backend),
    )
    metrics = metrics_from_eval(ev, coco_gt, (per_image_cap,), len(ids), len(dets))
    summary = {k: v for k, v in metrics.summary.items() if not k.startswith("AR@")}
    precision = np.asarray(ev.eval["precision"])[..., 0, -1]  # [T, R, K]
    cat_order = list(ev.params.catIds)
    for freq, name in zip(FREQUENCIES, ("APr", "APc", "APf")):
        cols = [k for k, c in enumerate(cat_order) if coco_gt.cats[c].get("frequency") == freq]
        summary[name] = summarize(precision[:, :, cols]) if cols else -1.0
    summary["AR"] = metrics.summary[f"AR@{per_image_cap}"]
    metrics.summary = summary
    metrics.extra = {"topk_per_class": topk_per_class, "max_dets_per_image": max_dets_per_image}
    return metrics


def _federated_evaluator(backend: str):
    if backend != "faster-coco-eval":
        return FederatedCOCOeval
    try:
        from faster_coco_eval import COCOeval_faster  # optional ([eval])
    except ImportError:
        raise GdinoError("backend faster-coco-eval needs: pip install faster-coco-eval") from None
    return functools.partial(COCOeval_faster, lvis_style=True, print_function=logger.debug)


def limit_per_image(detections: Sequence[dict], k: int) -> list[dict]:
    """Keep each image's ``k`` highest-scoring detections (input order kept)."""
    by_img: dict[Any, list[int]] = defaultdict(list)
    for i, d in enumerate(detections):
        by_img[d["image_id"]].append(i)
    keep: list[int] = []
    for idx in by_img.values():
        order = sorted(idx, key=lambda i: -detections[i]["score"])[:k]
        keep.extend(order)
    return [detections[i] for i in sorted(keep)]


def check_lvis_fields(coco_gt) -> None:
    """Every image needs the two federated lists, every category a frequency in r/c/f."""
    for img in coco_gt.dataset["images"]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if not isinstance(img.get(key), list):
                raise GdinoError(f"LVIS annotations: image id {img['id']} has no {key!r} list (not an LVIS file?)")
    for cat in coco_gt.dataset["categories"]:
        if cat.get("frequency") not in FREQUENCIES:
            raise GdinoError(
                f"LVIS annotations: category id {cat['id']} {cat.get('name')!r} has frequency "
                f"{cat.get('frequency')!r}; expected 'r', 'c' or 'f'"
            )
