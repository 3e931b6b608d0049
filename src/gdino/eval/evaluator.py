"""Evaluating a model end to end: :class:`Evaluator` and :func:`evaluate_coco`.

Each method runs the model over a dataset (:mod:`gdino.eval.predict`), scores the detections
(:mod:`gdino.eval.coco`, :mod:`gdino.eval.lvis`, :mod:`gdino.eval.refcoco`) and returns a JSON-able
dict (fractions in [0, 1]). With ``out_dir`` it also writes ``metrics.json``,
``detections.json`` and precision-recall PNGs there.

Training validation can call it between epochs: every call makes a fresh
:class:`gdino.infer.detector.Detector`, so no text features are cached across weight updates,
and the model's train/eval mode is restored afterwards.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from gdino.errors import GdinoError
from gdino.eval.annotations import load_coco_gt
from gdino.eval.coco import BACKENDS, DetectionMetrics, score_coco
from gdino.eval.lvis import check_lvis_fields, score_lvis
from gdino.eval.odinw import load_listing, summarize_odinw
from gdino.eval.predict import predict_dataset
from gdino.eval.refcoco import evaluate_refs
from gdino.eval.report import plot_class_pr_curves, plot_pr_curves, write_json
from gdino.infer.detector import Detector
from gdino.infer.options import DetectOptions

logger = logging.getLogger("gdino.eval")


#: how the official evaluation runs the detector: no box threshold, the best 300 (query, class)
#: pairs per image, boxes not clipped
EVAL_DETECT = DetectOptions(box_threshold=0.0, topk=300, clip=False)


@dataclass(frozen=True)
class EvalOptions:
    """How a model is evaluated.

    Attributes:
        detect: the detection options (batch size, dtype, image size, ``topk``...); default
            :data:`EVAL_DETECT`, the official protocol.
        backend: COCO scorer, ``"pycocotools"`` or ``"faster-coco-eval"``.
        progress: show tqdm progress bars.
        max_images: evaluate only the first N images (ascending id); None: all.
    """

    detect: DetectOptions = EVAL_DETECT
    backend: str = "pycocotools"
    progress: bool = True
    max_images: int | None = None

    def __post_init__(self) -> None:
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise GdinoError(f"max_images must be a positive int, got {self.max_images!r}")
        if self.backend not in BACKENDS:
            raise GdinoError(f"unknown COCO backend {self.backend!r}; use one of {', '.join(BACKENDS)}")

    @classmethod
    def build(cls, **kwargs: Any) -> EvalOptions:
        """Keyword arguments of :class:`EvalOptions` and of :class:`DetectOptions`, mixed."""
        detect_names = {f.name for f in fields(DetectOptions)}
        detect = {k: kwargs.pop(k) for k in list(kwargs) if k in detect_names}
        base = kwargs.pop("detect", EVAL_DETECT)
        return cls(detect=replace(base, **detect), **kwargs)


class Evaluator:
    """Evaluate one model on COCO, LVIS, ODinW or RefCOCO data with shared :class:`EvalOptions`."""

    def __init__(self, model, options: EvalOptions | None = None, *, predictor: Any = None, **kwargs: Any) -> None:
        """``predictor``: runs the model instead of this process (e.g. :class:`gdino.eval.ray_predict.RayPredictor`,
        called as ``predictor(detect_options, gt, images_dir, image_ids, progress=, label=)``); ``model`` may then be None."""
        self.model = model
        self.predictor = predictor
        self.options = options if options is not None else EvalOptions.build(**kwargs)
        #: the :class:`DetectionMetrics` of the last COCO/LVIS call (curves included)
        self.last_metrics: DetectionMetrics | None = None

    def detector(self) -> Detector:
        if self.model is None:
            raise GdinoError("this evaluation runs on a predictor (Ray) and has no model in this process")
        return Detector(self.model, self.options.detect)

    # ------------------------------------------------------------------ datasets
    def coco(
        self, annotations, images_dir, *, out_dir: str | os.PathLike | None = None, desc: str = "coco"
    ) -> dict[str, Any]:
        """COCO box AP (official Grounding DINO protocol) on a COCO-format dataset."""
        gt = load_coco_gt(annotations)
        ids = self._image_ids(gt)
        dets = self._predict(gt, images_dir, ids, _label(annotations), desc)
        metrics = score_coco(gt, dets, backend=self.options.backend, image_ids=ids)
        return self._finish(metrics, dets, out_dir, "COCO")

    def lvis(
        self, annotations, images_dir, *, topk_per_class: int | None = 10_000, out_dir: str | os.PathLike | None = None
    ) -> dict[str, Any]:
        """LVIS Fixed AP (federated rules; per-class top-k over the dataset) with chunked prompts."""
        gt = load_coco_gt(annotations)
        check_lvis_fields(gt)
        ids = self._image_ids(gt)
        dets = self._predict(gt, images_dir, ids, _label(annotations), "lvis")
        metrics = score_lvis(gt, dets, topk_per_class=topk_per_class, image_ids=ids, backend=self.options.backend)
        return self._finish(metrics, dets, out_dir, "LVIS")

    def odinw(self, listing, *, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """AP of every dataset of an ODinW listing, with the mean and median."""
        entries = load_listing(listing)
        per_dataset: dict[str, dict[str, Any]] = {}
        for k, entry in enumerate(entries):
            sub = None if out_dir is None else Path(out_dir) / entry.name
            logger.info("ODinW %d/%d: %s", k + 1, len(entries), entry.name)
            res = self.coco(entry.annotations, entry.images, out_dir=sub, desc=entry.name[:24])
            per_dataset[entry.name] = {key: v for key, v in res.items() if key != "per_class"}
        result = {**summarize_odinw({n: r["AP"] for n, r in per_dataset.items()}), "datasets": per_dataset}
        if out_dir is not None:
            write_json(Path(out_dir) / "metrics.json", result)
        return result

    def refcoco(
        self, annotations, images_dir, *, split: str | None = None, out_dir: str | os.PathLike | None = None
    ) -> dict[str, Any]:
        """Top-1 accuracy at IoU 0.5 of referring expressions (see :mod:`gdino.eval.refcoco`)."""
        res = evaluate_refs(
            self.detector(),
            annotations,
            images_dir,
            split=split,
            progress=self.options.progress,
            max_images=self.options.max_images,
        )
        if out_dir is not None:
            write_json(Path(out_dir) / "predictions.json", res["predictions"])
            write_json(Path(out_dir) / "metrics.json", {k: v for k, v in res.items() if k != "predictions"})
        return res

    # ------------------------------------------------------------------ internals
    def _image_ids(self, gt) -> list[int]:
        ids = sorted(gt.getImgIds())
        return ids if self.options.max_images is None else ids[: self.options.max_images]

    def _predict(self, gt, images_dir, ids, label: str, desc: str) -> list[dict]:
        if self.predictor is not None:
            return self.predictor(self.options.detect, gt, images_dir, ids, progress=self.options.progress, label=label)
        return predict_dataset(
            self.detector(),
            gt,
            images_dir,
            image_ids=ids,
            progress=self.options.progress,
            label=label,
            desc=desc,
        )

    def _finish(self, metrics: DetectionMetrics, dets: list[dict], out_dir, title: str) -> dict[str, Any]:
        self.last_metrics = metrics
        result = metrics.to_dict()
        if out_dir is not None:
            write_outputs(metrics, dets, out_dir, title)
        return result


def write_outputs(
    metrics: DetectionMetrics, dets: list[dict], out_dir: str | os.PathLike, title: str = ""
) -> list[Path]:
    """``metrics.json``, ``detections.json``, ``pr_curves.png`` and ``pr_per_class.png`` in ``out_dir``."""
    out = Path(out_dir)
    files = [write_json(out / "metrics.json", metrics.to_dict()), write_json(out / "detections.json", dets)]
    files.append(
        plot_pr_curves(
            metrics.precision,
            metrics.recall_thresholds,
            metrics.iou_thresholds,
            out / "pr_curves.png",
            title=f"{title} precision-recall".strip(),
        )
    )
    files.append(
        plot_class_pr_curves(
            metrics.precision,
            metrics.recall_thresholds,
            metrics.iou_thresholds,
            metrics.class_names,
            out / "pr_per_class.png",
        )
    )
    return files


def evaluate_coco(
    model, dataset_json, images_dir, *, out_dir: str | os.PathLike | None = None, **options: Any
) -> dict[str, Any]:
    """COCO box AP of ``model`` on a COCO-format dataset; ``options`` as :meth:`EvalOptions.build`.

    Returns:
        ``{"AP", "AP50", ..., "per_class": {name: AP}, "num_images", "num_detections"}``.
    """
    return Evaluator(model, **options).coco(dataset_json, images_dir, out_dir=out_dir)


def evaluate_lvis(
    model, dataset_json, images_dir, *, out_dir=None, topk_per_class: int | None = 10_000, **options: Any
) -> dict[str, Any]:
    """LVIS Fixed AP of ``model``; see :meth:`Evaluator.lvis`."""
    return Evaluator(model, **options).lvis(dataset_json, images_dir, topk_per_class=topk_per_class, out_dir=out_dir)


def _label(source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "annotations"
