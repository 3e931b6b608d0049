"""The YOLO dataset layout that Ultralytics trains on.

Ultralytics finds an image's labels by replacing the last ``/images/`` of its path with
``/labels/`` and the extension with ``.txt``, so the dataset is::

    OUT/images/train/<relative image path>      a link to the source image (a copy where links fail)
    OUT/labels/train/<relative image path>.txt  one "class cx cy w h" line per box, normalized to [0, 1]
    OUT/data.yaml                               path (OUT, absolute), train, val, names
    OUT/classes.txt                             one class name per line

Auto-labels have no held-out split: every image is in ``train`` and ``val`` names the same folder;
move some images and their label files to ``images/val`` / ``labels/val`` and edit ``val:`` for a
real validation split.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gdino.core.files import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

SPLIT = "train"


def yolo_lines(image: dict[str, Any], annotations: list[dict[str, Any]]) -> list[str]:
    """``class cx cy w h`` lines (normalized) of one COCO image's annotations."""
    w, h = image["width"], image["height"]
    lines = []
    for a in annotations:
        x, y, bw, bh = a["bbox"]
        lines.append(f"{a['category_id'] - 1} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
    return lines


def link_image(source: Path, target: Path) -> None:
    """``target`` -> ``source`` as a symbolic link, replaced atomically; a copy where links fail."""
    if target.is_symlink() and os.readlink(target) == str(source):
        return
    with atomic_path(target, fsync=False) as tmp:
        try:
            os.symlink(source, tmp)
        except OSError as e:  # e.g. Windows without the privilege, or a filesystem without links
            logger.debug("cannot link %s (%s); copying", target, e)
            shutil.copyfile(source, tmp)


def write_yolo(
    out: Path, image_root: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]], class_names: list[str]
) -> list[Path]:
    """Write the layout of the module docstring for the COCO ``images`` / ``annotations``."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in annotations:
        by_image.setdefault(a["image_id"], []).append(a)
    root = Path(image_root).resolve()
    seen: dict[Path, str] = {}
    for img in images:
        rel = Path(img["file_name"])
        target = out / "labels" / SPLIT / rel.with_suffix(".txt")
        if target in seen:
            logger.warning(
                "YOLO labels of %s and %s share %s; the last one wins", seen[target], img["file_name"], target
            )
        seen[target] = img["file_name"]
        link_image(root / rel, out / "images" / SPLIT / rel)
        atomic_write_text(
            target, "".join(line + "\n" for line in yolo_lines(img, by_image.get(img["id"], []))), fsync=False
        )
    names = "".join(f"  {i}: {json.dumps(n, ensure_ascii=False)}\n" for i, n in enumerate(class_names))
    path = json.dumps(str(out.resolve()), ensure_ascii=False)  # a JSON string is a YAML string
    atomic_write_text(out / "data.yaml", f"path: {path}\ntrain: images/{SPLIT}\nval: images/{SPLIT}\nnames:\n{names}")
    atomic_write_text(out / "classes.txt", "".join(n + "\n" for n in class_names))
    return [out / "images", out / "labels", out / "data.yaml", out / "classes.txt"]
