"""Training and validation datasets: annotation file + images folder -> ``(image, Target)``.

Public API of ``gdino.data`` (names are stable):

- ``dataset.build_dataset(kind, ann_file, images_dir, tokenizer, transform=None, prompt_cfg=None,
  label_map=None, train=True, seed=None) -> GroundingDataset``; ``kind`` is ``"coco"`` or ``"odvg"``.
- ``dataset.GroundingDataset``: ``ds[i] -> (image, Target)``; ``ds.classes``, ``ds.category_ids``,
  ``ds.records``, ``ds.set_epoch(epoch)``, ``ds.load_sample(i)`` (un-augmented).
- ``prompts.PromptConfig(max_classes=80, max_tokens=256, num_negatives=None, shuffle=True,
  max_text_len=256)``; ``prompts.detection_prompt``, ``prompts.grounding_prompt``, ``prompts.token_map``.
- ``transforms.TransformConfig`` (``TransformConfig.scaled(eval_size)`` for small images),
  ``transforms.build_train_transform(cfg)``, ``transforms.build_eval_transform(cfg)``.
- ``collate.collate(batch) -> collate.Batch(pixel_values, pixel_mask, targets, captions)``.
- ``coco.load_coco(ann_file)``, ``odvg.load_odvg(ann_file, label_map)``, ``odvg.load_label_map(...)``
  -> ``records.Annotations``.
- ``synthetic.generate(out_dir, SyntheticConfig)`` and ``python -m gdino.data.synthetic``.

Randomness (prompt sampling, augmentation): with ``seed`` set, item ``i`` of epoch ``e`` uses a
generator seeded from ``(seed, e, i)``, so a sample does not depend on workers or on resuming;
with ``seed=None`` the global torch RNG is used (DataLoader seeds it per worker).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from gdino.data.coco import load_coco
from gdino.data.odvg import load_odvg
from gdino.data.prompts import PromptConfig, class_token_counts, detection_prompt, grounding_prompt, token_map
from gdino.data.records import Annotations, check_images_exist, check_not_empty
from gdino.data.targets import Target
from gdino.data.transforms import Sample, Transform
from gdino.errors import GdinoError, InputImageError
from gdino.ops.boxes import xyxy_to_cxcywh

logger = logging.getLogger(__name__)


class GroundingDataset(Dataset):
    """Images with detection or grounding annotations, returned as ``(image, Target)``.

    ``image`` is a ``tv_tensors.Image`` ``[3, H, W]``: uint8 without a transform, float and
    normalized after the train/eval transforms. ``Target.caption`` is the prompt the token maps
    refer to: sampled classes for detection records, the caption for grounding records.
    """

    def __init__(
        self,
        annotations: Annotations,
        images_dir: str | os.PathLike,
        tokenizer,
        transform: Transform | None = None,
        prompt_cfg: PromptConfig | None = None,
        train: bool = True,
        seed: int | None = None,
        check_files: bool = True,
    ) -> None:
        check_not_empty(annotations.records, annotations.source)
        if check_files:
            check_images_exist(annotations.records, images_dir, annotations.source)
        self.annotations = annotations
        self.records = annotations.records
        self.classes = annotations.classes
        self.category_ids = annotations.category_ids
        self.images_dir = Path(images_dir)
        self.tokenizer = tokenizer
        self.transform = transform
        self.prompt_cfg = prompt_cfg or PromptConfig(shuffle=train)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self._token_counts = class_token_counts(tokenizer, self.classes)
        self._warned_drop = False

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Vary the seeded randomness per epoch (call before each epoch, as for DistributedSampler)."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator | None:
        """The generator for item ``index`` in the current epoch (None without a seed)."""
        if self.seed is None:
            return None
        mixed = (self.seed * 0x9E3779B1 + self.epoch * 0x85EBCA77 + index * 0xC2B2AE3D) % (2**63 - 1)
        return torch.Generator().manual_seed(mixed)

    def load_sample(self, index: int) -> Sample:
        """Item ``index`` as stored: uint8 image, xyxy pixel boxes, labels, caption (no augmentation)."""
        rec = self.records[index]
        image = read_image(self.images_dir / rec.file_name, (rec.height, rec.width))
        boxes = tv_tensors.BoundingBoxes(
            rec.boxes.clone(), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(rec.height, rec.width)
        )
        return Sample(image, boxes, rec.labels.clone(), rec.caption, [list(s) for s in rec.phrase_spans])

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        gen = self.generator(index)
        sample = self.load_sample(index)
        if self.transform is not None:
            sample = self.transform(sample, gen)
        return sample.image, self._target(index, sample, gen)

    def _target(self, index: int, sample: Sample, gen: torch.Generator | None) -> Target:
        rec = self.records[index]
        labels = sample.labels
        if sample.caption is None:
            prompt, phrase_of = detection_prompt(
                self.tokenizer, self.classes, labels.tolist(), self.prompt_cfg, gen, self._token_counts
            )
            mapped = [phrase_of.get(int(c)) for c in labels]
        else:
            prompt, of = grounding_prompt(self.tokenizer, sample.caption, sample.phrase_spans, self.prompt_cfg)
            mapped = [of[int(c)] for c in labels]
        keep = torch.tensor([m is not None for m in mapped], dtype=torch.bool)
        if not bool(keep.all()) and not self._warned_drop:
            self._warned_drop = True
            logger.warning(
                "%s: image %s: %d boxes dropped because their class/phrase did not fit the prompt "
                "(max_classes=%d, max_tokens=%d, max_text_len=%d); reported once",
                self.annotations.source,
                rec.file_name,
                int((~keep).sum()),
                self.prompt_cfg.max_classes,
                self.prompt_cfg.max_tokens,
                self.prompt_cfg.max_text_len,
            )
        new_labels = torch.tensor([m for m in mapped if m is not None], dtype=torch.long)
        h, w = sample.image.shape[-2:]
        xyxy = sample.boxes.as_subclass(Tensor)[keep].to(torch.float32)
        boxes = xyxy_to_cxcywh(xyxy / xyxy.new_tensor([w, h, w, h])).reshape(-1, 4)
        tmap = token_map(prompt.token_spans, self.prompt_cfg.max_text_len)
        return Target(
            boxes=boxes,
            token_map=tmap[new_labels],
            labels=new_labels,
            phrases=prompt.phrases,
            caption=prompt.caption,
            image_id=rec.image_id,
            size=(int(h), int(w)),
            orig_size=(rec.height, rec.width),
        )


def read_image(path: Path, expected_hw: tuple[int, int] | None = None) -> tv_tensors.Image:
    """Decode an image file as RGB uint8 ``[3, H, W]`` (EXIF orientation applied when it fits).

    Raises:
        InputImageError: unreadable file, or a size that is not the annotated one.
    """
    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        if expected_hw is not None and tuple(image.shape[-2:]) != tuple(expected_hw):
            # Annotations usually refer to the stored pixels, before any EXIF rotation.
            image = decode_image(data, mode=ImageReadMode.RGB)
    except (OSError, RuntimeError, ValueError) as e:
        raise InputImageError(f"cannot read image {path}: {e}") from e
    if expected_hw is not None and tuple(image.shape[-2:]) != tuple(expected_hw):
        raise InputImageError(
            f"image {path} is {image.shape[-1]}x{image.shape[-2]} but its annotation says "
            f"{expected_hw[1]}x{expected_hw[0]} (width x height); fix the annotation's size"
        )
    return tv_tensors.Image(image)


def build_dataset(
    kind: Literal["coco", "odvg"],
    ann_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    tokenizer,
    transform: Transform | None = None,
    prompt_cfg: PromptConfig | None = None,
    label_map: str | os.PathLike | Mapping | None = None,
    train: bool = True,
    seed: int | None = None,
) -> GroundingDataset:
    """Read an annotation file (checked up front, image files included) into a dataset.

    Args:
        kind: ``"coco"`` (detection JSON) or ``"odvg"`` (JSONL, with ``label_map`` for detection records).
        prompt_cfg: default ``PromptConfig(shuffle=train)``.
        train: sample negatives and shuffle prompts (False: every class in order, as far as it fits).
        seed: makes prompts and augmentation reproducible per (epoch, index); see the module doc.
    """
    if kind == "coco":
        if label_map is not None:
            raise GdinoError("a COCO file carries its own categories; label_map is for ODVG files")
        annotations = load_coco(ann_file)
    elif kind == "odvg":
        annotations = load_odvg(ann_file, label_map)
    else:
        raise GdinoError(f"unknown dataset kind {kind!r}: use 'coco' or 'odvg'")
    return GroundingDataset(annotations, images_dir, tokenizer, transform, prompt_cfg, train, seed)
