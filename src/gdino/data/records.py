"""What an annotation file becomes before any image is read: one :class:`ImageRecord` per image.

Both file formats (COCO JSON, ODVG JSONL) parse into the same records, so prompts, transforms and
the dataset never look at the file format. Boxes are xyxy in original-image pixels, already
clamped to the image (:func:`sanitize_boxes`); degenerate ones are gone.

A record is either a *detection* record (``caption is None``: ``labels`` index the dataset's class
list) or a *grounding* record (``labels`` index ``phrase_spans``: the character spans of each
box's phrase in ``caption``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from gdino.errors import GdinoError

logger = logging.getLogger(__name__)

Span = tuple[int, int]


@dataclass
class ImageRecord:
    """One image's annotations.

    Attributes:
        image_id: id of the image (COCO ``id``; the line number for ODVG).
        file_name: path relative to the images folder.
        height, width: size of the stored image in pixels.
        boxes: ``[N, 4]`` float32 xyxy pixels inside the image, positive width and height.
        labels: ``[N]`` long: class index (detection) or phrase index (grounding).
        caption: the grounding caption, or None for a detection record.
        phrase_spans: grounding only: per phrase, its ``(start, end)`` character spans in ``caption``.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: Tensor
    labels: Tensor
    caption: str | None = None
    phrase_spans: list[list[Span]] = field(default_factory=list)

    @property
    def is_grounding(self) -> bool:
        return self.caption is not None


@dataclass
class BoxReport:
    """Counts of boxes fixed while loading a file (reported once, in one log line)."""

    clamped: int = 0
    dropped: int = 0

    def add(self, other: BoxReport) -> None:
        self.clamped += other.clamped
        self.dropped += other.dropped

    def log(self, source: str | os.PathLike) -> None:
        if self.clamped or self.dropped:
            logger.warning(
                "%s: %d boxes reached outside their image and were clamped; %d degenerate boxes "
                "(no area inside the image) were dropped",
                source,
                self.clamped,
                self.dropped,
            )


def sanitize_boxes(boxes: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, BoxReport]:
    """Clamp xyxy boxes to the image and drop those left without area.

    Args:
        boxes: ``[N, 4]`` xyxy pixels (NaN coordinates count as degenerate).

    Returns:
        ``(kept_boxes [K, 4] float32, keep [N] bool, report)``; ``report.clamped`` counts kept boxes
        that were changed by the clamp, ``report.dropped`` the boxes removed.
    """
    boxes = boxes.to(torch.float32).reshape(-1, 4)
    finite = torch.isfinite(boxes).all(1)
    safe = torch.where(finite[:, None], boxes, torch.zeros_like(boxes))
    scale = safe.new_tensor([width, height, width, height])
    clamped = torch.minimum(safe.clamp(min=0), scale)
    keep = finite & (clamped[:, 2] > clamped[:, 0]) & (clamped[:, 3] > clamped[:, 1])
    changed = (clamped != safe).any(1) & keep
    report = BoxReport(clamped=int(changed.sum()), dropped=int((~keep).sum()))
    return clamped[keep], keep, report


def check_images_exist(records: Sequence[ImageRecord], images_dir: str | os.PathLike, source: str) -> None:
    """Raise one error listing the image files that the annotations name but the folder lacks."""
    root = Path(images_dir)
    if not root.is_dir():
        raise GdinoError(f"images folder {root} (for {source}) does not exist or is not a folder")
    missing = [r.file_name for r in records if not (root / r.file_name).is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise GdinoError(f"{len(missing)} of {len(records)} images named in {source} are missing from {root}: {shown}")


def check_not_empty(records: Sequence[ImageRecord], source: str) -> None:
    if not records:
        raise GdinoError(f"{source} holds no images: nothing to train or evaluate on")


@dataclass
class Annotations:
    """A parsed annotation file.

    Attributes:
        records: one per image, in file order.
        classes: class names, index = the ``labels`` of detection records (empty if grounding only).
        category_ids: the file's id of each class (COCO category id, ODVG label-map key).
        source: the file it came from (for messages).
    """

    records: list[ImageRecord]
    classes: list[str]
    category_ids: list[int]
    source: str
