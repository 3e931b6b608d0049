"""``gdino label --engine ray``: the labeler on Ray Data, writing the same dataset as one process.

The driver lists the images (a local folder with the single-process labeler's ``find_images``,
or a pyarrow filesystem URI), checks or creates ``job.json`` exactly as
:func:`gdino.label.folder.label_folder` does, reads the shards already written and hands the
rest to :func:`gdino.infer.ray_data.run_on_ray`, whose workers write one shard per batch
(:mod:`gdino.label.shards`). Finally it merges every shard's records with
:func:`gdino.label.dataset.write_dataset`, the writer of the single-process labeler: same images,
same order and ids, same boxes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gdino.core.images import IMAGE_EXTENSIONS, find_images
from gdino.errors import GdinoError, InputImageError
from gdino.infer.options import DetectOptions
from gdino.infer.prompts import class_names_of
from gdino.infer.ray_data import RayOptions, WorkerSpec, connect, run_on_ray, worker_device
from gdino.label.dataset import write_dataset
from gdino.label.folder import FORMATS, SHARD_DIR, STATE_DIR, LabelSummary, job_settings, prepare_state
from gdino.label.shards import ShardWriter, read_shards

logger = logging.getLogger(__name__)


def is_uri(source: str | os.PathLike) -> bool:
    """True for ``scheme://...`` sources (read through pyarrow's filesystems)."""
    return "://" in os.fspath(source)


def list_images(source: str | os.PathLike, exclude: Path | None = None) -> tuple[Any, str, list[str], list[str]]:
    """``(filesystem, root, names, paths)``: the images under ``source`` in folder order.

    ``names`` are relative posix paths (the dataset's ``file_name``), ``paths`` what Ray reads.
    A local folder is listed by ``find_images`` (the single-process labeler's order and rules);
    a URI by its pyarrow filesystem with the same rules (image extensions, no hidden entries,
    sorted by relative path).
    """
    if not is_uri(source):
        root = Path(source)
        files = find_images(root, exclude=exclude)
        base = root.resolve()
        names = [f.relative_to(root).as_posix() for f in files]
        return None, str(base), names, [str(base / n) for n in names]
    import pyarrow.fs  # lazy: optional dependency (comes with the [ray] extra)

    try:
        fs, base = pyarrow.fs.FileSystem.from_uri(os.fspath(source))
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
    except (OSError, ValueError) as e:  # pyarrow raises both for bad or unreachable URIs
        raise InputImageError(f"{source}: cannot list ({str(e).splitlines()[0]})") from None
    base = base.rstrip("/")
    names = []
    for info in infos:
        rel = info.path[len(base) + 1 :]
        if info.type == pyarrow.fs.FileType.File and Path(rel).suffix.lower() in IMAGE_EXTENSIONS:
            if not any(part.startswith(".") for part in rel.split("/")):
                names.append(rel)
    names.sort()
    return fs, base, names, [f"{base}/{n}" for n in names]


def label_with_ray(
    source: str | os.PathLike,
    out: str | os.PathLike,
    classes: Sequence[str],
    *,
    weights: str,
    ray_options: RayOptions | None = None,
    device: str | None = None,
    options: DetectOptions | None = None,
    formats: Sequence[str] = ("coco",),
    segmenter_factory: Callable[[], Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> LabelSummary:
    """Label every image under ``source`` into the dataset folder ``out`` on Ray.

    Same arguments and result as :func:`gdino.label.folder.label_folder`, except that workers
    load the model themselves: ``weights`` (visible to every worker), ``device`` (default from
    ``ray_options.gpus_per_worker``) and ``segmenter_factory`` (a picklable callable that builds the
    segmenter in a worker; None: no masks).

    Raises:
        InputImageError: ``source`` is missing or holds no images.
        GdinoError: ``out`` holds a job with other settings (and ``overwrite`` is False), or a
            YOLO dataset is asked of a remote source.
    """
    start = time.perf_counter()
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise GdinoError(f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    if "yolo" in formats and is_uri(source):
        raise GdinoError("--format yolo links the source images, so it needs a local folder (got a URI)")
    out = Path(out)
    fs, root, names, paths = list_images(source, exclude=out)
    if not names:
        raise InputImageError(f"{source}: no images found (looked for .jpg, .png, .webp, ... recursively)")
    opts = options or DetectOptions()
    ray = ray_options or RayOptions()
    class_names = class_names_of(classes)
    job = job_settings(class_names, opts, segmenter_factory is not None, settings)
    state = out / STATE_DIR
    prepare_state(state, job, overwrite)
    shards = state / SHARD_DIR
    shards.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(state / "attempts", ignore_errors=True)  # attempts count within one run
    (state / "attempts").mkdir()
    done = read_shards(shards)
    todo = [p for n, p in zip(names, paths) if n not in done]
    summary = LabelSummary(total=len(names), resumed=len(names) - len(todo))
    if todo:
        spec = WorkerSpec(
            weights=weights,
            device=worker_device(device, ray),
            options=opts.to_dict(),
            classes=tuple(classes),
            sink=ShardWriter(str(shards.resolve())),
            root=root,
            threads=ray.cpus_per_worker,
            segmenter_factory=segmenter_factory,
            attempts_dir=str((state / "attempts").resolve()),
        )
        started = connect(ray)
        try:
            for row in run_on_ray(todo, spec, ray, filesystem=fs, progress=progress):
                summary.labeled += int(row["images"]) - int(row["skipped"])
        finally:
            if started:
                import ray as ray_module  # lazy: optional dependency (the [ray] extra)

                ray_module.shutdown()
    merge_start = time.perf_counter()
    records = read_shards(shards)
    # where file_name is relative to: a local path (also for file://), else the URI itself
    image_root = (
        root if not is_uri(source) or os.fspath(source).startswith("file://") else os.fspath(source).rstrip("/")
    )
    summary.outputs = write_dataset(out, image_root, names, records, class_names, formats, job)
    logger.info("merged %d records into the dataset in %.2f s", len(records), time.perf_counter() - merge_start)
    summary.skipped = [(r["file"], r["error"]) for r in (records.get(n) for n in names) if r and "error" in r]
    summary.detections = sum(len(records[n].get("detections", [])) for n in names if n in records)
    summary.seconds = time.perf_counter() - start
    return summary
