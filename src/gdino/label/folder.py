"""``gdino label``: auto-label a folder of images into a COCO (and optionally YOLO) dataset.

Output folder layout::

    OUT/annotations.json            COCO: images, categories, annotations (with "score")
    OUT/images/train/<image path>   YOLO (with format "yolo"): links to the source images
    OUT/labels/train/<image path>.txt   "class cx cy w h", normalized (see gdino.label.yolo)
    OUT/data.yaml, OUT/classes.txt  the Ultralytics dataset file and the class names
    OUT/skipped.json                images that could not be read, with the reason
    OUT/.gdino-label/job.json       the job's settings (a resume must use the same ones)
    OUT/.gdino-label/journal.jsonl  one line per finished image: the source of truth

Resumable: each finished image is appended to the journal with a single ``write`` of a whole
line; the dataset files are rebuilt from the journal and replaced atomically at the end. A job
killed at any moment (even ``SIGKILL``) and run again skips the images in the journal (a torn
last line is discarded and that image redone), so every image appears exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gdino.core.files import atomic_write_text
from gdino.core.images import find_images
from gdino.errors import GdinoError, InputImageError
from gdino.infer.detector import Detector
from gdino.infer.options import DetectOptions
from gdino.label.dataset import detection_record, write_dataset

logger = logging.getLogger(__name__)

STATE_DIR = ".gdino-label"
#: the Ray engine's result shards, under STATE_DIR
SHARD_DIR = "shards"
FORMATS = ("coco", "yolo")
#: options that change how fast a job runs, not what it writes: a resume may change them
RUN_ONLY_OPTIONS = ("batch_size",)


@dataclass
class LabelSummary:
    """What a labeling run did."""

    total: int = 0  # images found
    labeled: int = 0  # labeled in this run
    resumed: int = 0  # already in the journal when the run started
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), all runs
    detections: int = 0  # boxes in the final dataset
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when no image at all could be labeled."""
        return self.total > 0 and len(self.skipped) >= self.total

    def line(self) -> str:
        rate = self.labeled / self.seconds if self.seconds > 0 else 0.0
        text = f"labeled {self.total - len(self.skipped)} of {self.total} images"
        if self.resumed:
            text += f" ({self.resumed} from an earlier run)"
        text += f", {self.detections} boxes, {rate:.2f} images/s, {self.seconds:.1f} s"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable (listed in skipped.json)"
        return text


class Journal:
    """Append-only JSON-lines file with whole-line writes; tolerant of a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            self._recover()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._unsynced = 0

    def _recover(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # killed in the middle of a write: drop the torn tail
            logger.info("journal %s: discarding a partial last line (%d bytes)", self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for raw in data[:end].splitlines():
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                logger.warning("journal %s: ignoring an unreadable line", self.path)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("file"), str):
                self.records.setdefault(rec["file"], rec)

    def add(self, record: dict[str, Any]) -> None:
        if record["file"] in self.records:
            return
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # pragma: no cover - regular files write fully
            raise OSError(f"short write to {self.path}")
        self.records[record["file"]] = record
        self._unsynced += 1
        if self._unsynced >= 16:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._fd)
        self._unsynced = 0

    def close(self) -> None:
        self.sync()
        os.close(self._fd)


def label_folder(
    detector: Detector,
    folder: str | os.PathLike,
    out: str | os.PathLike,
    classes: Sequence[str],
    *,
    options: DetectOptions | None = None,
    formats: Sequence[str] = ("coco",),
    segmenter: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 2,
    settings: dict[str, Any] | None = None,
) -> LabelSummary:
    """Label every image under ``folder`` with ``classes`` into the dataset folder ``out``.

    Args:
        detector: runs the model.
        classes: category names (classes mode: one class per box).
        options: detection options (default: the detector's); recorded in ``job.json``.
        formats: any of ``"coco"`` (always written) and ``"yolo"``.
        segmenter: optional Grounded-SAM segmenter (``segment(rgb_uint8, detections)``) adding masks.
        overwrite: discard an earlier job in ``out`` instead of resuming it.
        workers: image-loading threads.
        settings: extra settings recorded in ``job.json`` (e.g. weights); a resume must match.

    Raises:
        InputImageError: ``folder`` is missing or holds no images.
        GdinoError: ``out`` holds a job with other settings (and ``overwrite`` is False).
    """
    start = time.perf_counter()
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise GdinoError(f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    root, out = Path(folder), Path(out)
    files = find_images(root, exclude=out)
    if not files:
        raise InputImageError(f"{root}: no images found (looked for .jpg, .png, .webp, ... recursively)")
    prompt = detector.prompt(list(classes))
    opts = options or detector.options
    job = job_settings(prompt.class_names, opts, segmenter is not None, settings)
    state = out / STATE_DIR
    prepare_state(state, job, overwrite)
    journal = Journal(state / "journal.jsonl")
    rel = {f: f.relative_to(root).as_posix() for f in files}
    summary = LabelSummary(total=len(files))
    summary.resumed = sum(1 for f in files if rel[f] in journal.records)
    todo = [f for f in files if rel[f] not in journal.records]

    bar = tqdm(
        total=len(files),
        initial=len(files) - len(todo),
        unit="img",
        desc="labeling",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    try:
        for (name, _), dets in detector.run(
            _loaded(detector, opts, prompt, todo, rel, journal, bar, workers), opts, segmenter
        ):
            journal.add(detection_record(name, dets))
            summary.labeled += 1
            bar.update(1)
    finally:
        bar.close()
        journal.close()

    names = [rel[f] for f in files]
    summary.outputs = write_dataset(out, str(root.resolve()), names, journal.records, prompt.class_names, formats, job)
    summary.skipped = [
        (r["file"], r["error"]) for r in (journal.records.get(rel[f]) for f in files) if r and "error" in r
    ]
    summary.detections = sum(len(r.get("detections", [])) for r in journal.records.values())
    summary.seconds = time.perf_counter() - start
    return summary


def job_settings(
    class_names: Sequence[str], options: DetectOptions, masks: bool, settings: dict[str, Any] | None
) -> dict[str, Any]:
    """What ``job.json`` records (both engines): a resume must have the same."""
    return {
        "classes": list(class_names),
        "options": {k: v for k, v in options.to_dict().items() if k not in RUN_ONLY_OPTIONS},
        "masks": masks,
        **(settings or {}),
    }


def prepare_state(state: Path, job: dict[str, Any], overwrite: bool) -> None:
    """Create ``state/job.json``, or check that the one there has the same settings.

    Args:
        overwrite: delete the earlier job's files (journal, job.json and the Ray engine's shards).
    """
    job_file = state / "job.json"
    if overwrite and state.exists():
        for name in ("journal.jsonl", "job.json"):
            (state / name).unlink(missing_ok=True)
        shutil.rmtree(state / SHARD_DIR, ignore_errors=True)
        shutil.rmtree(state / "attempts", ignore_errors=True)
    if job_file.exists():
        try:
            old = json.loads(job_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(job)):
            diff = _first_difference(old, job)
            raise GdinoError(
                f"{state.parent} holds a labeling job with other settings ({diff}); "
                "use --overwrite to start over, or another --out"
            )
        return
    state.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_file, json.dumps(job, indent=2, ensure_ascii=False))


def _first_difference(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unreadable job.json"
    new = json.loads(json.dumps(new))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            a, b = json.dumps(old.get(key)), json.dumps(new.get(key))
            return f"{key}: {a[:40]} before, {b[:40]} now"
    return "unknown difference"


def _loaded(
    detector: Detector,
    opts: DetectOptions,
    prompt,
    todo: list[Path],
    rel: dict[Path, str],
    journal: Journal,
    bar,
    workers: int,
) -> Iterator:
    """Prepared images in order, loaded ahead by threads; unreadable ones go to the journal."""

    def load(path: Path):
        try:
            return detector.prepare(path, name=rel[path], options=opts), None
        except InputImageError as e:
            return None, str(e)
        except MemoryError:
            return None, f"{rel[path]}: out of memory while decoding"

    ahead = max(2, 2 * opts.batch_size)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = []
        it = iter(todo)
        for path in it:
            pending.append((path, pool.submit(load, path)))
            if len(pending) >= ahead:
                break
        while pending:
            path, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            prepared, error = fut.result()
            if error is not None:
                logger.warning("skipping %s", error)
                journal.add({"file": rel[path], "error": error})
                bar.update(1)
                continue
            yield (rel[path], prepared.loaded), prepared, prompt
