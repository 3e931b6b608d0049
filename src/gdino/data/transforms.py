"""Training and evaluation augmentation on images with boxes (torchvision.transforms.v2 functionals).

A transform maps a :class:`Sample` (image, ``tv_tensors.BoundingBoxes``, labels, and for grounding
records the caption with its phrase spans) to a new one: ``transform(sample, generator)``. Random
parameters come from ``generator`` (the global torch RNG when None), so augmentation is
reproducible from a seed.

Train (DETR/DINO recipe): horizontal flip (swapping "left"/"right" in grounding captions), then
either a multi-scale resize (shorter side from ``scales``, longer side <= ``max_size``) or the crop
branch (resize to one of ``crop_scales``, random crop of ``crop_min``..``crop_max``, multi-scale
resize), then ImageNet normalization. Eval: shorter side ``eval_size``, longer <= ``max_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torchvision import tv_tensors

from gdino.core.preprocess import resized_size  # the official rounding, shared with inference
from gdino.data.prompts import swap_left_right
from gdino.errors import GdinoError

Span = tuple[int, int]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Sample:
    """One image on its way through augmentation.

    Attributes:
        image: ``tv_tensors.Image`` ``[3, H, W]``, uint8 until normalized, then float32.
        boxes: ``tv_tensors.BoundingBoxes`` xyxy pixels, ``canvas_size == (H, W)``.
        labels: ``[N]`` long, one per box (class index or phrase index).
        caption: grounding caption, None for detection records.
        phrase_spans: grounding only: per phrase, its character spans in ``caption``.
    """

    image: Tensor
    boxes: tv_tensors.BoundingBoxes
    labels: Tensor
    caption: str | None = None
    phrase_spans: list[list[Span]] = field(default_factory=list)


Transform = Callable[[Sample, "torch.Generator | None"], Sample]


@dataclass(frozen=True)
class TransformConfig:
    """Augmentation sizes (defaults: the DETR/DINO/Grounding DINO recipe at full resolution).

    Attributes:
        scales: shorter-side choices of the multi-scale resize.
        max_size: cap on the longer side (train and eval).
        crop_scales: shorter-side choices before the random crop.
        crop_min, crop_max: crop side range in pixels.
        crop_prob: probability of the crop branch.
        flip_prob: probability of the horizontal flip.
        eval_size: shorter side at evaluation.
        normalize: convert to float and apply the ImageNet mean/std (False keeps uint8).
    """

    scales: tuple[int, ...] = tuple(range(480, 801, 32))
    max_size: int = 1333
    crop_scales: tuple[int, ...] = (400, 500, 600)
    crop_min: int = 384
    crop_max: int = 600
    crop_prob: float = 0.5
    flip_prob: float = 0.5
    eval_size: int = 800
    normalize: bool = True

    def __post_init__(self) -> None:
        sizes = (*self.scales, *self.crop_scales, self.max_size, self.crop_min, self.crop_max, self.eval_size)
        if not self.scales or not self.crop_scales or any(int(s) <= 0 for s in sizes):
            raise GdinoError(f"transform sizes must be positive and non-empty: {self}")
        if self.crop_min > self.crop_max:
            raise GdinoError(f"crop_min {self.crop_min} > crop_max {self.crop_max}")
        for name in ("crop_prob", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise GdinoError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        object.__setattr__(self, "crop_scales", tuple(int(s) for s in self.crop_scales))

    @classmethod
    def scaled(cls, eval_size: int, **overrides) -> TransformConfig:
        """The default recipe with every size multiplied by ``eval_size / 800`` (small smoke runs)."""
        f = eval_size / 800

        def s(v: int) -> int:
            return max(1, int(round(v * f)))

        base = cls()
        cfg = cls(
            scales=tuple(sorted({s(v) for v in base.scales})),
            max_size=s(base.max_size),
            crop_scales=tuple(s(v) for v in base.crop_scales),
            crop_min=s(base.crop_min),
            crop_max=s(base.crop_max),
            eval_size=eval_size,
        )
        return replace(cfg, **overrides)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _keep(sample: Sample, keep: Tensor, boxes: Tensor) -> Sample:
    boxes = tv_tensors.wrap(boxes[keep], like=sample.boxes)
    return replace(sample, boxes=boxes, labels=sample.labels[keep])


@dataclass(frozen=True)
class HorizontalFlip:
    """Flip with probability ``p``; "left" and "right" swap in grounding captions."""

    p: float = 0.5

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _rand(generator) >= self.p:
            return sample
        caption, spans = sample.caption, sample.phrase_spans
        if caption is not None:
            caption, spans = swap_left_right(caption, spans)
        return replace(
            sample,
            image=F.horizontal_flip(sample.image),
            boxes=F.horizontal_flip(sample.boxes),
            caption=caption,
            phrase_spans=spans,
        )


@dataclass(frozen=True)
class RandomResize:
    """Resize so the shorter side is one of ``sizes`` and the longer side at most ``max_size``."""

    sizes: Sequence[int]
    max_size: int | None = None

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        size = self.sizes[_randint(0, len(self.sizes) - 1, generator)] if len(self.sizes) > 1 else self.sizes[0]
        h, w = sample.image.shape[-2:]
        new_w, new_h = resized_size(w, h, size, self.max_size)
        if (new_h, new_w) == (h, w):
            return sample
        return replace(
            sample,
            image=F.resize(sample.image, [new_h, new_w], antialias=True),
            boxes=F.resize(sample.boxes, [new_h, new_w]),
        )


@dataclass(frozen=True)
class RandomSizeCrop:
    """Crop a random ``h x w`` window, sides uniform in ``[min_size, max_size]`` (capped by the image).

    Boxes are clipped to the window; those left without area are removed with their labels.
    """

    min_size: int
    max_size: int

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        h, w = sample.image.shape[-2:]
        cw = _randint(min(self.min_size, w), min(w, self.max_size), generator)
        ch = _randint(min(self.min_size, h), min(h, self.max_size), generator)
        top = _randint(0, h - ch, generator)
        left = _randint(0, w - cw, generator)
        image = F.crop(sample.image, top, left, ch, cw)
        boxes = F.clamp_bounding_boxes(F.crop(sample.boxes, top, left, ch, cw))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return _keep(replace(sample, image=image, boxes=boxes), keep, boxes)


@dataclass(frozen=True)
class RandomChoice:
    """Apply ``first`` with probability ``p``, else ``second``."""

    first: Transform
    second: Transform
    p: float = 0.5

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return self.first(sample, generator) if _rand(generator) < self.p else self.second(sample, generator)


@dataclass(frozen=True)
class Normalize:
    """uint8 -> float in [0, 1] -> ``(x - mean) / std``."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        image = F.to_dtype(sample.image, torch.float32, scale=True)
        return replace(sample, image=F.normalize(image, list(self.mean), list(self.std)))


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order, sharing one generator."""

    transforms: tuple[Transform, ...]

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator)
        return sample


def build_train_transform(cfg: TransformConfig = TransformConfig()) -> Compose:
    """Flip, then multi-scale resize or the crop branch, then (optionally) normalization."""
    multi_scale = RandomResize(cfg.scales, cfg.max_size)
    crop_branch = Compose((RandomResize(cfg.crop_scales), RandomSizeCrop(cfg.crop_min, cfg.crop_max), multi_scale))
    steps: list[Transform] = [HorizontalFlip(cfg.flip_prob), RandomChoice(crop_branch, multi_scale, cfg.crop_prob)]
    if cfg.normalize:
        steps.append(Normalize())
    return Compose(tuple(steps))


def build_eval_transform(cfg: TransformConfig = TransformConfig()) -> Compose:
    """Shorter side ``eval_size``, longer at most ``max_size`` (the official inference size), normalized."""
    steps: list[Transform] = [RandomResize((cfg.eval_size,), cfg.max_size)]
    if cfg.normalize:
        steps.append(Normalize())
    return Compose(tuple(steps))
