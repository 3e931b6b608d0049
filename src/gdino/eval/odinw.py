"""ODinW: many small COCO-format datasets, AP per dataset, then the mean and median.

Listing format (YAML or JSON)::

    root: /data/odinw            # optional; default: the listing's folder
    datasets:
      - name: AerialMaritimeDrone_large
        annotations: AerialMaritimeDrone/large/test/annotations_without_background.json
        images: AerialMaritimeDrone/large/test
      - ...

A bare list of such entries is accepted too. Relative paths resolve against ``root``.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdino.errors import GdinoError
from gdino.eval.report import percent


@dataclass(frozen=True)
class OdinwDataset:
    """One entry of a listing, with absolute paths."""

    name: str
    annotations: Path
    images: Path


def load_listing(path: str | os.PathLike) -> list[OdinwDataset]:
    """Parse a YAML/JSON listing (see the module docstring).

    Raises:
        GdinoError: unreadable file, no datasets, an entry without name/annotations/images,
            or a name used twice.
    """
    p = Path(path)
    if not p.is_file():
        raise GdinoError(f"{p}: ODinW listing not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GdinoError(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    else:
        try:
            import yaml  # optional ([train]/[eval]): only YAML listings need it
        except ImportError:
            raise GdinoError(f"{p}: a YAML listing needs pyyaml (pip install pyyaml); or use JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise GdinoError(f"{p}: not valid YAML ({first})") from None
    root = p.parent
    if isinstance(data, Mapping):
        if data.get("root"):
            root = (p.parent / str(data["root"])).resolve()
        entries = data.get("datasets")
    else:
        entries = data
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)) or not entries:
        raise GdinoError(f"{p}: expected a non-empty 'datasets' list")
    out: list[OdinwDataset] = []
    seen = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not all(
            isinstance(entry.get(k), str) and entry.get(k) for k in ("annotations", "images")
        ):
            raise GdinoError(f"{p}: datasets[{i}] needs 'annotations' and 'images' paths")
        name = str(entry.get("name") or Path(entry["annotations"]).parent.as_posix())
        if name in seen:
            raise GdinoError(f"{p}: datasets[{i}] repeats the name {name!r}")
        seen.add(name)
        out.append(OdinwDataset(name, root / entry["annotations"], root / entry["images"]))
    return out


def summarize_odinw(per_dataset: Mapping[str, float]) -> dict[str, float]:
    """Mean and median AP over datasets (undefined, negative values count as 0)."""
    if not per_dataset:
        raise GdinoError("no ODinW datasets were evaluated")
    values = [max(float(v), 0.0) for v in per_dataset.values()]
    return {"mean_AP": statistics.fmean(values), "median_AP": statistics.median(values), "num_datasets": len(values)}


def odinw_table_rows(results: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Rows ``name, AP, AP50`` in percent for :func:`gdino.eval.report.format_table`."""
    return [[name, percent(r.get("AP")), percent(r.get("AP50"))] for name, r in results.items()]
