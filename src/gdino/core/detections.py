"""``Detections``: what :func:`gdino.infer.detector.detect` returns for one image.

Boxes are ``xyxy`` in original-image pixels (after EXIF orientation), float32 on the CPU.
Conversions: :meth:`Detections.to_dict` / :meth:`to_json` (plain JSON), :meth:`to_coco` (COCO
result annotations, masks as RLE), :meth:`to_supervision` (``supervision.Detections``, when that
package is installed); class-aware non-maximum suppression with :meth:`nms`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from gdino.core.rle import encode_mask
from gdino.errors import GdinoError


@dataclass
class Detections:
    """Detections of one image (N boxes).

    Attributes:
        xyxy: ``[N, 4]`` float32 boxes in original-image pixels.
        scores: ``[N]`` detector confidence in [0, 1].
        class_ids: ``[N]`` long: index into ``class_names`` (a class in classes mode, the prompt
            phrase in phrase mode), -1 when unknown.
        labels: N strings: the class name (classes mode) or the decoded phrase (phrase mode).
        image_size: ``(width, height)`` of the original image.
        class_names: the classes, or the prompt's phrases, that ``class_ids`` index.
        image: the image's path or name, for outputs.
        masks: optional ``[N, H, W]`` bool instance masks (Grounded-SAM).
        mask_scores: optional ``[N]`` mask quality (SAM's predicted IoU), separate from ``scores``.
    """

    xyxy: Tensor
    scores: Tensor
    class_ids: Tensor
    labels: list[str]
    image_size: tuple[int, int]
    class_names: list[str] = field(default_factory=list)
    image: str | None = None
    masks: Tensor | None = None
    mask_scores: Tensor | None = None

    def __post_init__(self) -> None:
        self.xyxy = torch.as_tensor(self.xyxy, dtype=torch.float32).reshape(-1, 4)
        n = self.xyxy.shape[0]
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
        self.class_ids = torch.as_tensor(self.class_ids, dtype=torch.long).reshape(-1)
        self.labels = list(self.labels)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.class_names = list(self.class_names)
        if self.masks is not None:
            self.masks = torch.as_tensor(self.masks).to(torch.bool)
            if self.masks.dim() != 3 or self.masks.shape[0] != n:
                raise ValueError(f"masks must be [N, H, W] with N={n}, got {tuple(self.masks.shape)}")
        if self.mask_scores is not None:
            self.mask_scores = torch.as_tensor(self.mask_scores, dtype=torch.float32).reshape(-1)
        sizes = {
            "scores": self.scores.numel(),
            "class_ids": self.class_ids.numel(),
            "labels": len(self.labels),
            **({"mask_scores": self.mask_scores.numel()} if self.mask_scores is not None else {}),
        }
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(f"Detections fields disagree in length: xyxy has {n}, {bad}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(
        cls, image_size: tuple[int, int], class_names: Sequence[str] = (), image: str | None = None
    ) -> Detections:
        """No detections for an image of ``image_size`` (width, height)."""
        return cls(
            torch.zeros(0, 4),
            torch.zeros(0),
            torch.zeros(0, dtype=torch.long),
            [],
            image_size,
            list(class_names),
            image,
        )

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """Join detections of the same image (e.g. from several prompt chunks)."""
        if not parts:
            raise ValueError("concat needs at least one Detections")
        first = parts[0]
        with_masks = [p.masks is not None for p in parts if len(p)]
        masks = None
        if with_masks and all(with_masks):
            masks = torch.cat([p.masks for p in parts if len(p) and p.masks is not None])
        elif any(with_masks):
            raise ValueError("cannot concat Detections with and without masks")
        scored = [p.mask_scores is not None for p in parts if len(p)]
        mask_scores = (
            torch.cat([p.mask_scores for p in parts if len(p) and p.mask_scores is not None])
            if scored and all(scored)
            else None
        )
        return cls(
            torch.cat([p.xyxy for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.class_ids for p in parts]),
            [label for p in parts for label in p.labels],
            first.image_size,
            first.class_names,
            first.image,
            masks,
            mask_scores,
        )

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Detections:
        """A subset (int, slice, index list, or bool/long tensor); always a ``Detections``."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, slice):
            idx = torch.arange(len(self))[index]
        else:
            idx = torch.as_tensor(index)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
            idx = idx.to(torch.long).reshape(-1)
        il = idx.tolist()
        return replace(
            self,
            xyxy=self.xyxy[idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            labels=[self.labels[i] for i in il],
            masks=None if self.masks is None else self.masks[idx],
            mask_scores=None if self.mask_scores is None else self.mask_scores[idx],
        )

    def sort(self) -> Detections:
        """Highest score first (stable)."""
        return self[torch.sort(self.scores, descending=True, stable=True).indices]

    # ------------------------------------------------------------------ post-processing
    def nms(self, iou_threshold: float = 0.5, class_agnostic: bool = False) -> Detections:
        """Non-maximum suppression, per class by default (``torchvision.ops.batched_nms``).

        In phrase mode the "class" is the label text. The result is sorted by score.
        """
        if len(self) == 0:
            return self
        if class_agnostic:
            keep = nms(self.xyxy, self.scores, float(iou_threshold))
        else:
            if (self.class_ids >= 0).all():
                groups = self.class_ids
            else:  # phrase mode without ids: group by label text
                names = {name: i for i, name in enumerate(sorted(set(self.labels)))}
                groups = torch.tensor([names[n] for n in self.labels], dtype=torch.long)
            keep = batched_nms(self.xyxy, self.scores, groups, float(iou_threshold))
        return self[keep]

    def clip(self) -> Detections:
        """Boxes clipped to the image."""
        w, h = self.image_size
        xyxy = self.xyxy.clone()
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        return replace(self, xyxy=xyxy)

    # ------------------------------------------------------------------ exports
    def to_dict(self, decimals: int = 2) -> dict[str, Any]:
        """JSON-able dict: image, width, height and one entry per detection.

        Each detection: ``label``, ``score``, ``box`` (``[x0, y0, x1, y1]`` pixels), ``class_id``
        (omitted when -1) and ``mask`` (COCO RLE) / ``mask_score`` when masks are present.
        """
        dets = []
        boxes = self.xyxy.tolist()
        for i in range(len(self)):
            d: dict[str, Any] = {
                "label": self.labels[i],
                "score": round(float(self.scores[i]), 4),
                "box": [round(v, decimals) for v in boxes[i]],
            }
            if int(self.class_ids[i]) >= 0:
                d["class_id"] = int(self.class_ids[i])
            if self.masks is not None:
                d["mask"] = _rle(self.masks[i])
            if self.mask_scores is not None:
                d["mask_score"] = round(float(self.mask_scores[i]), 4)
            dets.append(d)
        out: dict[str, Any] = {"image": self.image, "width": self.image_size[0], "height": self.image_size[1]}
        if self.class_names:
            out["classes"] = list(self.class_names)
        out["detections"] = dets
        return out

    def to_json(self, indent: int | None = None) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_coco(
        self, image_id: int = 0, category_ids: Sequence[int] | None = None, start_id: int | None = None
    ) -> list[dict[str, Any]]:
        """COCO annotations / results: ``bbox`` ``[x, y, w, h]``, ``score``, ``category_id``, ``area``.

        Args:
            image_id: the COCO image id.
            category_ids: maps ``class_ids`` to COCO category ids (default: ``class_id + 1``, so
                categories start at 1). Detections with class id -1 get category 0.
            start_id: when given, annotations get consecutive ``id`` s from it.
        Masks, when present, are written as RLE ``segmentation`` with ``area`` = mask pixels.
        """
        anns = []
        boxes = self.xyxy.tolist()
        for i in range(len(self)):
            x0, y0, x1, y1 = boxes[i]
            cid = int(self.class_ids[i])
            if cid < 0:
                cat = 0
            elif category_ids is not None:
                cat = int(category_ids[cid])
            else:
                cat = cid + 1
            ann: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": cat,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(max(x1 - x0, 0.0) * max(y1 - y0, 0.0), 2),
                "score": round(float(self.scores[i]), 5),
                "iscrowd": 0,
                "label": self.labels[i],
            }
            if self.masks is not None:
                ann["segmentation"] = _rle(self.masks[i])
                ann["area"] = int(self.masks[i].sum())
            if self.mask_scores is not None:
                ann["mask_score"] = round(float(self.mask_scores[i]), 5)
            if start_id is not None:
                ann["id"] = int(start_id) + i
            anns.append(ann)
        return anns

    def to_supervision(self):
        """A ``supervision.Detections`` (needs ``pip install supervision``).

        ``class_id`` carries the class ids, ``data["class_name"]`` the labels, ``mask`` the masks.
        """
        try:
            import supervision as sv  # optional: only this conversion needs it
        except ImportError as e:
            raise GdinoError("to_supervision() needs the supervision package: pip install supervision") from e
        return sv.Detections(
            xyxy=self.xyxy.numpy().astype(np.float32).reshape(-1, 4),
            confidence=self.scores.numpy().astype(np.float32),
            class_id=self.class_ids.numpy().astype(int),
            mask=None if self.masks is None else self.masks.numpy(),
            data={"class_name": np.array(self.labels, dtype=str)},
        )

    def __repr__(self) -> str:
        items = ", ".join(f"{lab or '?'} {s:.2f}" for lab, s in zip(self.labels[:5], self.scores.tolist()[:5]))
        more = f", ... ({len(self)} in all)" if len(self) > 5 else ""
        return f"Detections({self.image or ''} {self.image_size[0]}x{self.image_size[1]}: [{items}{more}])"


def _rle(mask: Tensor) -> dict[str, Any]:

    return encode_mask(mask.numpy() if isinstance(mask, Tensor) else mask)
