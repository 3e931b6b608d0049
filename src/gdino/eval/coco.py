"""COCO box AP of precomputed detections: :func:`score_coco`.

The numbers are pycocotools' own (``COCOeval`` with ``iouType="bbox"``); ``backend=
"faster-coco-eval"`` runs the same protocol in C++ and gives identical values. The summary is
computed from the accumulated precision/recall arrays with pycocotools' rule (mean over the
entries that are not -1), so any ``max_dets`` works; values are fractions in [0, 1] (-1 where
there is nothing to measure, e.g. no small objects).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gdino.errors import GdinoError
from gdino.eval.annotations import load_coco_gt, load_detections, quiet_coco

logger = logging.getLogger("gdino.eval")

BACKENDS = ("pycocotools", "faster-coco-eval")
AREAS = ("all", "small", "medium", "large")


@dataclass
class DetectionMetrics:
    """What an evaluation measured.

    Attributes:
        summary: ``AP, AP50, AP75, APs, APm, APl, AR@{m} ..., ARs, ARm, ARl`` (fractions; -1 where
            undefined); LVIS adds ``APr, APc, APf``.
        per_class: AP (IoU 0.5:0.95, all areas) per category name; None without ground truth.
        category_ids / class_names: the evaluated categories, ascending id.
        precision: ``[T, R, K]`` interpolated precision (area "all", largest max_dets), -1 where
            a category has no ground truth; rows follow ``iou_thresholds``, columns
            ``recall_thresholds``.
    """

    summary: dict[str, float]
    per_class: dict[str, float | None]
    category_ids: list[int]
    class_names: list[str]
    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    num_images: int
    num_detections: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.summary[key]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the summary at top level, plus ``per_class`` and counts."""
        out: dict[str, Any] = {k: _num(v) for k, v in self.summary.items()}
        out["per_class"] = {k: _num(v) for k, v in self.per_class.items()}
        out["num_images"] = self.num_images
        out["num_detections"] = self.num_detections
        out.update(self.extra)
        return out


def score_coco(
    gt: Any,
    detections: Any,
    *,
    backend: str = "pycocotools",
    max_dets: Sequence[int] = (1, 10, 100),
    image_ids: Sequence[int] | None = None,
) -> DetectionMetrics:
    """COCO box AP of ``detections`` against ``gt``.

    Args:
        gt: annotation file path, COCO dict, or ``pycocotools.coco.COCO``.
        detections: results file path or list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
            "score"}`` (checked: bad entries raise :class:`GdinoError`).
        backend: ``"pycocotools"`` or ``"faster-coco-eval"`` (same numbers, faster).
        max_dets: detections per image considered (pycocotools' ``maxDets``).
        image_ids: evaluate these images only (default: all images of ``gt``).
    """
    coco_gt = load_coco_gt(gt)
    dets = load_detections(detections, coco_gt)
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(set(image_ids))
    ev = run_cocoeval(coco_gt.dataset, dets, backend=backend, max_dets=max_dets, image_ids=ids)
    return metrics_from_eval(ev, coco_gt, max_dets, len(ids), sum(d["image_id"] in set(ids) for d in dets))


def run_cocoeval(
    gt_dataset: dict,
    dets: list[dict],
    *,
    backend: str,
    max_dets: Sequence[int],
    image_ids: Sequence[int],
    evaluator=None,
):
    """Evaluate and accumulate (quietly); returns the evaluator with ``.eval`` filled.

    ``evaluator`` replaces pycocotools' ``COCOeval`` class (LVIS passes its federated subclass).
    """
    if backend not in BACKENDS:
        raise GdinoError(f"unknown COCO backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO as Coco  # optional ([eval])
            from faster_coco_eval import COCOeval_faster as CocoEval  # optional ([eval])
        except ImportError:
            raise GdinoError("backend faster-coco-eval needs: pip install faster-coco-eval") from None
        make = lambda d: Coco(d)  # noqa: E731
    else:
        from pycocotools.cocoeval import COCOeval as CocoEval  # optional ([eval]): only COCO scoring needs it

        make = quiet_coco
    if evaluator is not None:
        CocoEval = evaluator
    gt = make(gt_dataset)
    dt = make(results_dataset(gt_dataset, dets))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = CocoEval(gt, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.params.maxDets = [int(m) for m in max_dets]
        ev.evaluate()
        ev.accumulate()
    return ev


def results_dataset(gt_dataset: dict, dets: list[dict]) -> dict:
    """A results "dataset" as ``COCO.loadRes`` builds it for boxes (also for an empty list)."""
    anns = []
    for i, d in enumerate(dets):
        x, y, w, h = d["bbox"]
        anns.append(
            {
                "id": i + 1,
                "image_id": d["image_id"],
                "category_id": d["category_id"],
                "bbox": [x, y, w, h],
                "score": d["score"],
                "area": w * h,
                "iscrowd": 0,
                "segmentation": [[x, y, x, y + h, x + w, y + h, x + w, y]],
            }
        )
    return {"images": list(gt_dataset["images"]), "categories": list(gt_dataset["categories"]), "annotations": anns}


def metrics_from_eval(ev, coco_gt, max_dets: Sequence[int], num_images: int, num_detections: int) -> DetectionMetrics:
    """Summary, per-class AP and curves from an accumulated ``COCOeval``."""
    p = ev.params
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    recall = np.asarray(ev.eval["recall"])  # [T, K, A, M]
    iou = np.asarray(p.iouThrs)
    m_last = len(p.maxDets) - 1
    summary = {
        "AP": summarize(precision[..., 0, m_last]),
        "AP50": summarize(precision[_iou_index(iou, 0.5), ..., 0, m_last]),
        "AP75": summarize(precision[_iou_index(iou, 0.75), ..., 0, m_last]),
        "APs": summarize(precision[..., 1, m_last]),
        "APm": summarize(precision[..., 2, m_last]),
        "APl": summarize(precision[..., 3, m_last]),
    }
    for m, md in enumerate(p.maxDets):
        summary[f"AR@{md}"] = summarize(recall[..., 0, m])
    for a, name in ((1, "ARs"), (2, "ARm"), (3, "ARl")):
        summary[name] = summarize(recall[..., a, m_last])
    ids = sorted(coco_gt.getCatIds())
    order = {cid: k for k, cid in enumerate(p.catIds)}
    per_class = {}
    for cid in ids:
        v = summarize(precision[:, :, order[cid], 0, m_last])
        per_class[coco_gt.cats[cid]["name"]] = None if v < 0 else v
    return DetectionMetrics(
        summary=summary,
        per_class=per_class,
        category_ids=ids,
        class_names=[coco_gt.cats[c]["name"] for c in ids],
        precision=precision[:, :, [order[c] for c in ids], 0, m_last],
        iou_thresholds=iou,
        recall_thresholds=np.asarray(p.recThrs),
        num_images=num_images,
        num_detections=num_detections,
    )


def summarize(values: np.ndarray) -> float:
    """pycocotools' mean: over entries > -1, or -1 when there are none."""
    v = np.asarray(values)
    v = v[v > -1]
    return float(np.mean(v)) if v.size else -1.0


def _iou_index(iou: np.ndarray, value: float) -> int:
    idx = np.where(np.isclose(iou, value))[0]
    return int(idx[0])


def _num(v):
    if v is None:
        return None
    return float(v)
