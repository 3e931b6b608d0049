"""``gdino eval ... --engine ray``: the predictions of :func:`gdino.eval.predict.predict_dataset` on
a pool of Ray Data workers (:mod:`gdino.infer.ray_data`), the images sharded as the labeler does.

Each worker loads the weights once, runs the evaluation options (``EVAL_DETECT``: no threshold,
top 300) with the dataset's class prompt and returns each image's COCO results; the driver puts
them in ascending image id, so the scorer sees what one process gives it and the metrics match.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from gdino.errors import InputImageError
from gdino.eval.annotations import category_names
from gdino.eval.predict import detections_to_results, image_path
from gdino.infer.options import DetectOptions
from gdino.infer.ray_data import ImageResult, RayOptions, WorkerSpec, connect, run_on_ray, worker_device

logger = logging.getLogger("gdino.eval")


class ResultRows:
    """Worker sink: one row per image with its id and its COCO results as JSON (or the error)."""

    def __init__(self, ids_by_path: dict[str, int], category_ids: Sequence[int]) -> None:
        self.ids_by_path = ids_by_path
        self.category_ids = list(category_ids)

    def __call__(self, results: Sequence[ImageResult]) -> dict[str, np.ndarray]:
        ids, texts, errors = [], [], []
        for path, _, dets, error in results:
            image_id = self.ids_by_path[path]
            ids.append(image_id)
            texts.append("" if dets is None else json.dumps(detections_to_results(dets, image_id, self.category_ids)))
            errors.append(error or "")
        return {"image_id": np.array(ids, dtype=np.int64), "results": np.array(texts), "error": np.array(errors)}


class RayPredictor:
    """A drop-in for ``predict_dataset`` that runs on Ray (see :class:`gdino.eval.evaluator.Evaluator`).

    Args:
        weights: what every worker loads (a hub name or a path visible to the workers).
        device: the workers' device (None: ``cuda`` with GPUs per worker, else ``cpu``).
    """

    def __init__(self, weights: str, ray_options: RayOptions, device: str | None = None) -> None:
        self.weights = weights
        self.ray_options = ray_options
        self.device = worker_device(device, ray_options)
        self._started: bool | None = None

    def __call__(
        self,
        options: DetectOptions,
        gt,
        images_dir: str | os.PathLike,
        image_ids: Sequence[int],
        *,
        progress: bool = True,
        label: str = "annotations",
    ) -> list[dict[str, Any]]:
        ids = list(image_ids)
        paths = {i: os.path.abspath(image_path(images_dir, gt.imgs[i], label)) for i in ids}
        cat_ids, names = category_names(gt)
        spec = WorkerSpec(
            weights=self.weights,
            device=self.device,
            options=options.to_dict(),
            classes=tuple(names),
            sink=ResultRows({p: i for i, p in paths.items()}, cat_ids),
            root=os.path.abspath(images_dir),
            threads=self.ray_options.cpus_per_worker,
        )
        if self._started is None:
            self._started = connect(self.ray_options)
        by_id: dict[int, list[dict[str, Any]]] = {}
        for row in run_on_ray([paths[i] for i in ids], spec, self.ray_options, progress=progress):
            if row["error"]:
                raise InputImageError(str(row["error"]))
            by_id[int(row["image_id"])] = json.loads(row["results"])
        missing = [i for i in ids if i not in by_id]
        if missing:  # pragma: no cover - Ray returns every row or raises
            raise RuntimeError(f"the Ray job returned no result for {len(missing)} images (first id {missing[0]})")
        logger.info("%d images predicted on %d Ray worker(s)", len(ids), self.ray_options.workers)
        return [r for i in ids for r in by_id[i]]

    def close(self) -> None:
        """Shut down the local Ray this predictor started (a cluster it joined keeps running)."""
        if self._started:
            import ray  # lazy: optional dependency (the [ray] extra)

            ray.shutdown()
        self._started = None
