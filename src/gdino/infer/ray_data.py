"""Running the detector over many images on Ray Data: one stateful detector per worker.

:func:`run_on_ray` reads the image files with ``ray.data.read_binary_files`` (a local folder or
any filesystem pyarrow supports: ``s3://``, ``gs://``, ``hdfs://``...), groups them into batches
of ``RayOptions.shard_size`` images and hands each batch to a :class:`DetectorWorker` actor of a
pool of ``RayOptions.workers``. A worker loads the model once (``Detector.from_pretrained``),
builds the prompt's text features once, decodes and detects its batch, then passes the results
to the caller's *sink* (a picklable callable: the labeler's writes a shard file, the evaluator's
returns COCO results) and returns the sink's rows. Ray restarts a worker that dies and runs its
batch again (``max_restarts`` / ``max_task_retries``, Ray Data's defaults for actors). With
``WorkerSpec.attempts_dir``, a worker counts its attempts at each batch in a small file there, and
a batch that has killed ``max_attempts`` workers is not run again: its images are reported as
errors (a poison image, an out-of-memory batch), so the job ends instead of retrying forever.

``ray`` is an optional dependency (the ``[ray]`` extra), imported only when a job starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdino.core.detections import Detections
from gdino.core.files import atomic_write_text
from gdino.core.images import load_image
from gdino.errors import GdinoError, InputImageError, first_line
from gdino.infer.detector import Detector
from gdino.infer.options import DetectOptions

logger = logging.getLogger(__name__)

#: one image's outcome handed to a sink: (path as Ray read it, name, detections or None, error or None)
ImageResult = tuple[str, str, "Detections | None", "str | None"]
Sink = Callable[[Sequence[ImageResult]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray job runs.

    Attributes:
        address: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); None:
            ``RAY_ADDRESS`` if set, else a local Ray instance started for the job.
        workers: detector actors (model copies).
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU); 0: CPU workers.
        cpus_per_worker: CPUs each actor reserves, also its torch thread count.
        shard_size: images per batch handed to a worker (and per shard file when labeling).
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: int = 1
    shard_size: int = 64

    def __post_init__(self) -> None:
        for name in ("workers", "cpus_per_worker", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise GdinoError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.gpus_per_worker < 0:
            raise GdinoError(f"gpus-per-worker must be >= 0, got {self.gpus_per_worker}")


@dataclass(frozen=True)
class WorkerSpec:
    """What every :class:`DetectorWorker` builds once (picklable: it travels to the workers).

    Attributes:
        weights: what ``Detector.from_pretrained`` loads (hub name, file or folder visible to the workers).
        device: ``"cpu"``, ``"cuda"`` (the GPU Ray assigned to the actor)...
        options: ``DetectOptions.to_dict()``.
        classes: the class list of the prompt.
        sink: turns a batch's results into the rows the worker returns.
        root: image names are the paths relative to this prefix (error messages, records).
        threads: torch intra-op threads of the worker.
        segmenter_factory: builds a segmenter (``segment(rgb, dets)``) in the worker; None: no masks.
        attempts_dir: a folder all workers can write to, for counting attempts per batch; None:
            Ray's unbounded retries.
        max_attempts: attempts at one batch before its images are reported as errors.
    """

    weights: str
    device: str
    options: dict[str, Any]
    classes: tuple[str, ...]
    sink: Sink
    root: str = ""
    threads: int = 1
    segmenter_factory: Callable[[], Any] | None = field(default=None)
    attempts_dir: str | None = None
    max_attempts: int = 3


class DetectorWorker:
    """The stateful Ray Data UDF: model, prompt and segmenter loaded once per actor."""

    def __init__(self, spec: WorkerSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.options = DetectOptions.from_dict(spec.options)
        self.detector = Detector.from_pretrained(spec.weights, device=spec.device, options=self.options)
        self.prompt = self.detector.prompt(list(spec.classes))
        self.segmenter = spec.segmenter_factory() if spec.segmenter_factory is not None else None
        prefix = spec.root.rstrip("/")
        self._prefix = prefix + "/" if prefix else ""
        logger.info("detector worker %d ready on %s", os.getpid(), spec.device)

    def name_of(self, path: str) -> str:
        return path[len(self._prefix) :] if self._prefix and path.startswith(self._prefix) else path

    def _attempt(self, paths: list[str]) -> int:
        """Count one more attempt at this batch (1 for the first); 0 without ``attempts_dir``."""
        if self.spec.attempts_dir is None:
            return 0
        key = hashlib.sha1("\n".join(sorted(paths)).encode("utf-8")).hexdigest()[:20]
        path = Path(self.spec.attempts_dir) / f"{key}.attempts"
        try:
            count = int(path.read_text(encoding="ascii") or 0) + 1
        except (OSError, ValueError):
            count = 1
        atomic_write_text(path, str(count))
        return count

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        attempt = self._attempt(paths)
        if attempt > self.spec.max_attempts:
            reason = (
                f"a worker died on each of {self.spec.max_attempts} attempts at the batch holding this image "
                "(out of memory? a crash while decoding?); not retried"
            )
            logger.error("batch of %d images from %s: %s", len(paths), self.name_of(paths[0]), reason)
            return self.spec.sink([(p, self.name_of(p), None, f"{self.name_of(p)}: {reason}") for p in paths])
        errors: dict[str, str] = {}
        prepared = []
        for path, data in zip(paths, batch["bytes"]):
            name = self.name_of(path)
            try:
                loaded = load_image(bytes(data), name=name, max_pixels=self.options.max_pixels)
                prepared.append((path, self.detector.prepare(loaded, options=self.options), self.prompt))
            except InputImageError as e:
                errors[path] = str(e)
            except MemoryError:
                errors[path] = f"{name}: out of memory while decoding"
        found = dict(self.detector.run(prepared, self.options, self.segmenter))
        results: list[ImageResult] = [(p, self.name_of(p), found.get(p), errors.get(p)) for p in paths]
        return self.spec.sink(results)


def connect(options: RayOptions) -> bool:
    """Join the cluster ``options`` names, or start a local Ray; True when this call started it."""
    import ray  # lazy: optional dependency (the [ray] extra)

    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        need = options.workers * options.cpus_per_worker
        ray.init(num_cpus=max(need, os.cpu_count() or 1), include_dashboard=False)
    return True


def run_on_ray(
    paths: Sequence[str], spec: WorkerSpec, options: RayOptions, *, filesystem: Any = None, progress: bool = True
) -> Iterator[dict[str, Any]]:
    """Read ``paths``, detect on a pool of workers and yield the sinks' rows as they arrive.

    Ray must be connected (:func:`connect`). ``filesystem``: a ``pyarrow.fs.FileSystem`` the paths
    belong to (None: local paths or URIs).
    """
    import ray  # lazy: optional dependency (the [ray] extra)
    import ray.data

    if not paths:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # reading is I/O: it reserves no CPU, so it never waits for CPUs the detector actors hold
    ds = ray.data.read_binary_files(list(paths), include_paths=True, filesystem=filesystem, num_cpus=0)
    ds = ds.map_batches(
        DetectorWorker,
        fn_constructor_args=(spec,),
        batch_size=options.shard_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
    )
    try:
        yield from ds.iter_rows()
    except ray.exceptions.RayError as e:  # a worker raised (not died): the job stops, finished work stays
        raise GdinoError(f"the Ray job failed: {_user_error(e)}") from e


def _user_error(error: BaseException) -> str:
    """The worker's own exception as ``Type: message``: Ray re-raises it wrapped (``UserCodeException``)
    with the worker's traceback in the text, so the first non-Ray ``...Error: ...`` line there is it."""
    for line in str(error).splitlines():
        m = re.match(r"([A-Za-z_][\w.]*(?:Error|Exception)): (.+)", line.strip())
        if m and not m.group(1).startswith("ray."):
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    return first_line(error)


def worker_device(device: str | None, options: RayOptions) -> str:
    """The device the workers use: ``device`` if given, else ``cuda`` with GPUs per worker, else ``cpu``."""
    if device:
        return device
    return "cuda" if options.gpus_per_worker > 0 else "cpu"
