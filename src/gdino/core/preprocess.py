"""Official Grounding DINO image preprocessing, and padding images into a batch.

The official pipeline (``RandomResize([800], max_size=1333)``, ``ToTensor``, ``Normalize``):

1. the shorter side becomes 800 unless the longer side would then exceed 1333, in which case the
   shorter side becomes ``int(round(1333 * short / long))``; the longer side is
   ``int(short_target * long / short)`` (truncated);
2. Pillow's bilinear resize (antialiased) on the 8-bit image;
3. scale to [0, 1] and normalize with the ImageNet mean and std.

Other sizes are options: ``size`` may be another shorter-side length, an exact ``(height, width)``,
or None to keep the image as it is; ``max_size=None`` removes the cap on the longer side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gdino.errors import GdinoError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Official defaults.
DEFAULT_SIZE = 800
DEFAULT_MAX_SIZE = 1333


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are resized before the model.

    Attributes:
        size: shorter-side length (int), exact ``(height, width)``, or None (keep the original size).
        max_size: cap on the longer side when ``size`` is an int (None: no cap).
    """

    size: int | tuple[int, int] | None = DEFAULT_SIZE
    max_size: int | None = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
                raise GdinoError(f"image size must be a positive int or (height, width), got {size!r}")
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        elif size is not None and not (isinstance(size, int) and size > 0):
            raise GdinoError(f"image size must be a positive int or (height, width), got {size!r}")
        if self.max_size is not None and not (isinstance(self.max_size, int) and self.max_size > 0):
            raise GdinoError(f"max_size must be a positive int or None, got {self.max_size!r}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """``(new_width, new_height)`` for an image of ``width x height``."""
        if self.size is None:
            return width, height
        if isinstance(self.size, tuple):
            return self.size[1], self.size[0]
        return resized_size(width, height, self.size, self.max_size)


def resized_size(
    width: int, height: int, size: int = DEFAULT_SIZE, max_size: int | None = DEFAULT_MAX_SIZE
) -> tuple[int, int]:
    """Official target ``(width, height)``: shorter side ``size``, longer side capped at ``max_size``.

    Reproduces the official int rounding exactly: the shorter-side target is reduced to
    ``int(round(max_size * short / long))`` when needed, and the longer side is truncated, so
    ``resized_size(451, 300) == (1202, 800)`` and ``resized_size(4000, 1000) == (1332, 333)``.
    """
    short, long = (width, height) if width <= height else (height, width)
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_h, new_w = size, int(size * width / height)
    return max(new_w, 1), max(new_h, 1)


def preprocess(image: Image.Image, config: PreprocessConfig = PreprocessConfig()) -> Tensor:
    """RGB PIL image -> normalized float tensor ``[3, H', W']`` (official preprocessing by default)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    new_w, new_h = config.target_size(image.width, image.height)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def pad_batch(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad ``[3, H_i, W_i]`` tensors at the bottom/right into one batch.

    Returns:
        ``(pixel_values [B, 3, H, W], pixel_mask [B, H, W] bool)`` with True on real pixels.
    """
    if not images:
        raise ValueError("pad_batch needs at least one image")
    h = max(t.shape[-2] for t in images)
    w = max(t.shape[-1] for t in images)
    pixel_values = images[0].new_zeros((len(images), 3, h, w))
    pixel_mask = torch.zeros((len(images), h, w), dtype=torch.bool, device=images[0].device)
    for i, t in enumerate(images):
        pixel_values[i, :, : t.shape[-2], : t.shape[-1]] = t
        pixel_mask[i, : t.shape[-2], : t.shape[-1]] = True
    return pixel_values, pixel_mask
