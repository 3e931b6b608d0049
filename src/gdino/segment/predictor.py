"""``SamSegmenter``: boxes in original pixels -> one mask per box, with SAM.

Per image: one image-encoder call (:meth:`SamSegmenter.embed`), then all of the image's boxes go
through the prompt encoder and the mask decoder in one batched call (:meth:`predict`; chunks of
``decoder_batch`` boxes only for very many boxes). The box hand-off transforms coordinates once:
original pixels are scaled into SAM's resized frame (longest side = ``image_size``); low-resolution
mask logits are upsampled to the padded square, cropped to the resized image and upsampled to the
original size, then thresholded at 0.

SAM runs in its own dtype (``segmenter.dtype``) with autocast switched off, so a detector under
bf16/fp16 autocast does not change it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from gdino.core.detections import Detections

if TYPE_CHECKING:
    from segment_anything.modeling import Sam  # untyped package: Any to mypy


@dataclass(frozen=True)
class ImageEmbedding:
    """What SAM's image encoder computed for one image.

    Attributes:
        features: ``[1, C, h, w]`` image embedding (in the segmenter's dtype).
        original_size: ``(H, W)`` of the image as given.
        input_size: ``(H', W')`` of the resized image inside SAM's square input.
    """

    features: Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(H', W')`` with the longest side ``long_side`` (SAM's ``ResizeLongestSide`` rounding)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def boxes_to_input_frame(xyxy: Tensor, original_size: tuple[int, int], input_size: tuple[int, int]) -> Tensor:
    """``[N, 4]`` xyxy in original pixels -> the same boxes in SAM's resized input frame."""
    (h, w), (nh, nw) = original_size, input_size
    scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
    return xyxy.to(torch.float32) * scale


def image_for(image: Any, detections: Detections) -> np.ndarray:
    """``image`` as an RGB array, checked to be the size ``detections`` were made for."""
    arr = as_rgb_array(image)
    h, w = arr.shape[:2]
    if (w, h) != tuple(detections.image_size):
        raise ValueError(
            f"image is {w}x{h} but the detections are for {detections.image_size[0]}x{detections.image_size[1]}"
        )
    return arr


def with_no_masks(detections: Detections) -> Detections:
    """Empty ``detections`` with their (empty) ``masks`` and ``mask_scores`` set."""
    w, h = detections.image_size
    return replace(detections, masks=torch.zeros(0, h, w, dtype=torch.bool), mask_scores=torch.zeros(0))


def as_rgb_array(image: Any) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array from a numpy array, a PIL image or a ``LoadedImage``."""
    if hasattr(image, "image") and isinstance(image.image, Image.Image):  # gdino LoadedImage
        image = image.image
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {arr.dtype} {arr.shape}")
    return arr


class SamSegmenter:
    """Masks for boxes with a ``segment_anything`` ``Sam`` model.

    Args:
        model: a ``segment_anything.modeling.Sam`` (see :func:`gdino.segment.sam_model.build_sam`).
        multimask: predict 3 masks per box and keep the one with the best predicted IoU
            (default: SAM's single-mask output).
        decoder_batch: at most this many boxes per mask-decoder call (memory bound).
        dtype: precision of the image encoder and mask decoder (None: keep the model's); the
            small prompt encoder stays float32 (its Fourier features need it).
        name: shown in messages.
    """

    def __init__(
        self,
        model: Sam,
        *,
        multimask: bool = False,
        decoder_batch: int = 128,
        dtype: torch.dtype | None = None,
        name: str = "sam",
    ) -> None:
        self.model = model.eval()
        if dtype is not None:
            model.image_encoder.to(dtype)
            model.mask_decoder.to(dtype)
            model.prompt_encoder.float()
        self.multimask = bool(multimask)
        self.decoder_batch = int(decoder_batch)
        self.name = name
        #: counters for tests and benchmarks
        self.stats = {"image_encodes": 0, "decoder_calls": 0}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.mask_decoder.parameters()).dtype

    @property
    def image_size(self) -> int:
        return int(self.model.image_encoder.img_size)

    def _no_autocast(self):
        return torch.autocast(device_type=self.device.type, enabled=False)

    # ------------------------------------------------------------------ the two stages
    @torch.inference_mode()
    def embed(self, image: Any) -> ImageEmbedding:
        """Run the image encoder once on an ``HxWx3`` uint8 RGB image (or PIL image)."""
        arr = as_rgb_array(image)
        h, w = arr.shape[:2]
        nh, nw = resized_shape(h, w, self.image_size)
        resized = np.array(Image.fromarray(arr).resize((nw, nh), Image.Resampling.BILINEAR))
        x = torch.from_numpy(resized).permute(2, 0, 1).contiguous().to(self.device, torch.float32)
        with self._no_autocast():
            x = self.model.preprocess(x)[None]  # normalize + pad to the square
            features = self.model.image_encoder(x.to(self.dtype)).to(self.dtype)
        self.stats["image_encodes"] += 1
        return ImageEmbedding(features, (h, w), (nh, nw))

    @torch.inference_mode()
    def predict(self, embedding: ImageEmbedding, xyxy: Tensor, multimask: bool | None = None) -> tuple[Tensor, Tensor]:
        """Masks for ``[N, 4]`` xyxy boxes in original pixels.

        Returns:
            ``masks`` ``[N, H, W]`` bool at the original size, ``scores`` ``[N]`` float32: SAM's
            predicted IoU of each returned mask.
        """
        multimask = self.multimask if multimask is None else bool(multimask)
        h, w = embedding.original_size
        n = int(xyxy.shape[0])
        if n == 0:
            return torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0)
        boxes = boxes_to_input_frame(xyxy.reshape(-1, 4).cpu(), embedding.original_size, embedding.input_size)
        masks, scores = [], []
        for start in range(0, n, max(1, self.decoder_batch)):
            logits, iou = self._decode(embedding, boxes[start : start + self.decoder_batch], multimask)
            masks.append(self._to_original(logits, embedding))
            scores.append(iou)
        return torch.cat(masks), torch.cat(scores)

    def _decode(self, embedding: ImageEmbedding, boxes: Tensor, multimask: bool) -> tuple[Tensor, Tensor]:
        """One prompt-encoder + mask-decoder call: ``[n, h/4, w/4]`` logits (float32), ``[n]`` IoU."""
        sam = self.model
        with self._no_autocast():
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes.to(self.device), masks=None)
            logits, iou = sam.mask_decoder(
                image_embeddings=embedding.features,
                image_pe=sam.prompt_encoder.get_dense_pe().to(self.dtype),
                sparse_prompt_embeddings=sparse.to(self.dtype),
                dense_prompt_embeddings=dense.to(self.dtype),
                multimask_output=multimask,
            )
        self.stats["decoder_calls"] += 1
        logits, iou = logits.float(), iou.float()
        best = iou.argmax(dim=1)  # single-mask output: the only one
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, best], iou[rows, best].cpu()

    def _to_original(self, logits: Tensor, embedding: ImageEmbedding) -> Tensor:
        """Low-res logits -> padded square -> crop to the resized image -> original size, > 0."""
        size = self.image_size
        nh, nw = embedding.input_size
        out = []
        for part in logits.split(8):  # bounded memory: 8 full-size float maps at a time
            x = F.interpolate(part[:, None], (size, size), mode="bilinear", align_corners=False)
            x = x[..., :nh, :nw]
            x = F.interpolate(x, embedding.original_size, mode="bilinear", align_corners=False)
            out.append((x[:, 0] > 0.0).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ detections in, detections out
    def segment(self, image: Any, detections: Detections) -> Detections:
        """``detections`` of ``image`` with ``masks`` ``[N, H, W]`` and ``mask_scores`` added.

        The detector's ``scores`` are kept as they are; SAM's predicted IoU goes to
        ``mask_scores``. No boxes: empty masks, and the image encoder is not run.
        """
        arr = image_for(image, detections)
        if len(detections) == 0:
            return with_no_masks(detections)
        masks, scores = self.predict(self.embed(arr), detections.xyxy)
        return replace(detections, masks=masks, mask_scores=scores)

    def __repr__(self) -> str:
        return f"SamSegmenter({self.name}, {self.device}, {self.dtype}, multimask={self.multimask})"
