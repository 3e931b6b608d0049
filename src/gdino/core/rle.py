"""COCO run-length encoding (RLE) of binary masks, as pure numpy functions.

The format is the one ``pycocotools.mask`` reads and writes: runs are counted over the mask in
column-major (Fortran) order, starting with a run of zeros (possibly empty); the compressed form
stores each run as a string of 6-bit characters (offset 48), runs after the second as the
difference to the run two places before. ``{"size": [h, w], "counts": str}`` is what COCO files
hold; ``counts`` as a list of ints is the uncompressed form (also accepted when decoding).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def mask_to_runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2-D mask in column-major order, starting with zeros.

    Args:
        mask: ``[H, W]`` array, nonzero = foreground.
    Returns:
        Alternating zero/one run lengths summing to ``H * W`` (the first may be 0).
    """
    flat = np.asarray(mask).astype(bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs


def runs_to_mask(runs: list[int], height: int, width: int) -> np.ndarray:
    """Inverse of :func:`mask_to_runs`: ``[height, width]`` bool mask."""
    counts = np.asarray(runs, dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {height}*{width}={height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T.copy()


def runs_to_string(runs: list[int]) -> str:
    """COCO's compressed counts string (LEB128-like, 5 data bits per character, offset 48)."""
    out: list[str] = []
    for i, run in enumerate(runs):
        x = int(run) - (int(runs[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_runs(counts: str | bytes) -> list[int]:
    """Inverse of :func:`runs_to_string`."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE counts string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def encode_mask(mask: Any) -> dict[str, Any]:
    """``[H, W]`` mask (numpy, or a CPU tensor) -> ``{"size": [H, W], "counts": str}`` (COCO RLE)."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"encode_mask needs a 2-D mask, got shape {arr.shape}")
    return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": runs_to_string(mask_to_runs(arr))}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list ``counts``) -> ``[H, W]`` bool mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = list(counts) if isinstance(counts, (list, tuple)) else string_to_runs(counts)
    return runs_to_mask(runs, h, w)


def rle_area(rle: dict[str, Any]) -> int:
    """Foreground pixels of a COCO RLE without decoding it."""
    counts = rle["counts"]
    runs = list(counts) if isinstance(counts, (list, tuple)) else string_to_runs(counts)
    return int(sum(runs[1::2]))
