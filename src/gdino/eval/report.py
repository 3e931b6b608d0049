"""Presenting evaluation results: printed tables, JSON files and precision-recall plots.

Tables show percentages (AP x 100, one decimal, as papers do); JSON keeps fractions in [0, 1]
with -1 (or null per class) where nothing was measured.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gdino.core import files


def percent(value: float | None) -> str:
    """``0.4843`` -> ``"48.4"``; None, NaN or negative (undefined) -> ``"-"``."""
    if value is None or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        return "-"
    return f"{100.0 * value:.1f}"


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Plain-text table with aligned columns (first column left, others right)."""
    all_rows = ([list(header)] if header else []) + [list(r) for r in rows]
    if not all_rows:
        return ""
    widths = [max(len(str(r[i])) for r in all_rows) for i in range(len(all_rows[0]))]

    def line(r):
        cells = [str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)]
        return "  ".join(cells).rstrip()

    out = [line(r) for r in all_rows]
    if header:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def summary_table(summary: Mapping[str, float], title: str | None = None) -> str:
    """Two lines: metric names, then their percentages."""
    keys = list(summary)
    text = format_table([[percent(summary[k]) for k in keys]], header=keys)
    return f"{title}\n{text}" if title else text


def per_class_table(per_class: Mapping[str, float | None], limit: int | None = None) -> str:
    """Per-class AP, best first (classes without ground truth last), at most ``limit`` rows."""
    items = sorted(per_class.items(), key=lambda kv: (kv[1] is None, -(kv[1] or 0.0), kv[0]))
    if limit is not None:
        items = items[:limit]
    return format_table([[name, percent(ap)] for name, ap in items], header=["class", "AP"])


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (NaN becomes null), creating the folder; atomic."""
    return files.write_json(path, _clean(data))


def plot_pr_curves(
    precision: np.ndarray,
    recall_thresholds: np.ndarray,
    iou_thresholds: np.ndarray,
    path: str | os.PathLike,
    title: str = "precision-recall",
) -> Path:
    """Mean precision-recall curves over classes at IoU 0.5, 0.75 and averaged over 0.5:0.95.

    Args:
        precision: ``[T, R, K]`` from :class:`gdino.eval.coco.DetectionMetrics` (-1 = no data).
    """
    fig = _figure(figsize=(5, 4), dpi=100)
    ax = fig.subplots()
    curves = {
        "IoU=0.50": precision[_nearest(iou_thresholds, 0.5)],
        "IoU=0.75": precision[_nearest(iou_thresholds, 0.75)],
        "IoU=0.50:0.95": None,
    }
    for name, pr in curves.items():
        values = _mean_valid(precision, axis=(0, 2)) if pr is None else _mean_valid(pr, axis=1)
        ax.plot(recall_thresholds, values, label=name)
    _finish(ax, title)
    return _save(fig, path)


def plot_class_pr_curves(
    precision: np.ndarray,
    recall_thresholds: np.ndarray,
    iou_thresholds: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    max_classes: int = 20,
) -> Path:
    """Per-class precision-recall at IoU 0.5 for up to ``max_classes`` classes (grid of plots)."""
    pr = precision[_nearest(iou_thresholds, 0.5)]  # [R, K]
    valid = [k for k in range(pr.shape[1]) if (pr[:, k] > -1).any()][:max_classes]
    n = max(len(valid), 1)
    cols = min(4, n)
    rows = int(math.ceil(n / cols))
    fig = _figure(figsize=(3 * cols, 2.6 * rows), dpi=80)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, valid):
        ax.set_visible(True)
        ax.plot(recall_thresholds, np.clip(pr[:, k], 0, None))
        _finish(ax, str(class_names[k]), legend=False)
    fig.tight_layout()
    return _save(fig, path)


def _figure(**kwargs):
    """A matplotlib ``Figure`` drawn with Agg, without pyplot (no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional ([eval]): only the PR plots need it
    from matplotlib.figure import Figure  # optional ([eval]): only the PR plots need it

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _finish(ax, title: str, legend: bool = True) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def _save(fig, path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png")
    return p


def _nearest(values: np.ndarray, target: float) -> int:
    return int(np.argmin(np.abs(np.asarray(values) - target)))


def _mean_valid(values: np.ndarray, axis) -> np.ndarray:
    """Mean over ``axis`` of entries > -1 (0 where there are none)."""
    v = np.asarray(values, dtype=np.float64)
    ok = v > -1
    count = ok.sum(axis=axis)
    total = np.where(ok, v, 0.0).sum(axis=axis)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def _clean(data: Any) -> Any:
    if isinstance(data, float):
        return None if math.isnan(data) or math.isinf(data) else data
    if isinstance(data, Mapping):
        return {str(k): _clean(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_clean(v) for v in data]
    if isinstance(data, np.generic):
        return _clean(data.item())
    return data
