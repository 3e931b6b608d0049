"""Result shards of the Ray engine: one JSON-lines file of records per batch of images.

A worker labels a batch and writes its records (see :mod:`gdino.label.dataset`) to
``OUT/.gdino-label/shards/<hash of the batch's file names>.jsonl`` atomically (a temporary file,
then a rename), so a shard is either whole or absent: a worker killed mid-batch leaves nothing,
and Ray's retry of the batch writes the same name again. A job run again reads the shards
first and labels only the images that no shard holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gdino.core.files import atomic_write_text
from gdino.label.dataset import detection_record, error_record

logger = logging.getLogger(__name__)


def shard_name(files: Sequence[str]) -> str:
    """The file name of the shard that holds ``files`` (the same batch always gets the same name)."""
    digest = hashlib.sha1("\n".join(sorted(files)).encode("utf-8")).hexdigest()[:20]
    return f"shard-{digest}.jsonl"


def write_shard(folder: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``records`` as one shard in ``folder`` (atomically); returns its path."""
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    return atomic_write_text(folder / shard_name([r["file"] for r in records]), text)


def read_shards(folder: Path) -> dict[str, dict[str, Any]]:
    """Every record of every finished shard in ``folder`` by file name (the first one wins).

    Temporary files of writes that never finished are ignored (they are not ``shard-*.jsonl``).
    """
    records: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return records
    for path in sorted(folder.glob("shard-*.jsonl")):
        for raw in path.read_bytes().splitlines():
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                logger.warning("shard %s: ignoring an unreadable line", path)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("file"), str):
                records.setdefault(rec["file"], rec)
    return records


class ShardWriter:
    """The sink of :class:`gdino.infer.ray_data.DetectorWorker` for labeling: writes a batch's
    records as one shard and returns one summary row (shard, images, skipped, boxes)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def __call__(self, results: Sequence[tuple[str, str, Any, str | None]]) -> dict[str, np.ndarray]:
        records = [
            error_record(name, error) if error is not None else detection_record(name, dets)
            for _, name, dets, error in results
        ]
        path = write_shard(self.folder, records)
        return {
            "shard": np.array([path.name]),
            "images": np.array([len(records)]),
            "skipped": np.array([sum("error" in r for r in records)]),
            "boxes": np.array([sum(len(r.get("detections", ())) for r in records)]),
        }
