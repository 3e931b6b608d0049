"""``detect``: images + a prompt (or a class list) -> one :class:`Detections` per image.

How it runs (:class:`Detector`):

- **images** of any kind are loaded (:mod:`gdino.infer.images`) and preprocessed officially
  (:mod:`gdino.infer.preprocess`).
- **batching never changes a result**: only images with the same preprocessed size *and* the
  same prompt share a batch, so no image is ever padded; others run separately.
- **text cache**: each caption is encoded once per :class:`Detector` (a whole call, or a whole
  folder for ``gdino label``) and expanded over the batch.
- **image side once**: an image batch is encoded once and reused for every chunk of a long class
  list and, in :meth:`Detector.detect_prompts`, for every prompt. With ``image_cache_size > 0`` a
  :class:`Detector` also keeps the last images' features across calls.
- **long class lists** are split into chunks (:mod:`gdino.infer.prompts`); results are merged.
- **precision**: ``dtype`` fp16/bf16 runs under ``torch.autocast``; decoding is float32.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gdino.errors import GdinoError, PromptError
from gdino.infer.decode import class_scores, decode_phrases, select_per_query, select_topk_chunks
from gdino.infer.detections import Detections
from gdino.infer.images import DEFAULT_MAX_PIXELS, LoadedImage, load_image
from gdino.infer.preprocess import PreprocessConfig, preprocess
from gdino.infer.prompts import Prompt, build_prompt
from gdino.infer.runtime import autocast, check_dtype_on_device, resolve_dtype
from gdino.ops.boxes import cxcywh_to_xyxy


@dataclass(frozen=True)
class DecodeOptions:
    """How raw outputs become detections (validated on creation).

    Attributes:
        box_threshold: keep a box whose score is above this (classes mode: the class score;
            phrase mode: the highest token probability, as the official ``predict``).
        text_threshold: phrase mode: tokens above this form the label (unused for classes).
        remove_combined: phrase mode: label from the peak token's phrase only.
        topk: classes mode: instead of one class per query, the best ``topk`` (query, class)
            pairs above ``box_threshold`` (the official evaluation post-processing).
        nms_iou: if set, class-aware NMS at this IoU.
        clip: clip boxes to the image.
    """

    box_threshold: float = 0.35
    text_threshold: float = 0.25
    remove_combined: bool = True
    topk: int | None = None
    nms_iou: float | None = None
    clip: bool = True

    def __post_init__(self) -> None:
        for name in ("box_threshold", "text_threshold"):
            check_fraction(name, getattr(self, name))
        if self.nms_iou is not None:
            check_fraction("nms_iou", self.nms_iou)
        if self.topk is not None and (not isinstance(self.topk, int) or self.topk < 1):
            raise GdinoError(f"topk must be a positive int, got {self.topk!r}")


def check_fraction(name: str, value: Any) -> None:
    """Raise a one-line :class:`GdinoError` unless ``value`` is a number in [0, 1]."""
    try:
        ok = 0.0 <= float(value) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GdinoError(f"{name.replace('_', '-')} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """A loaded image and its preprocessed tensor ``[3, H', W']`` (CPU, float32)."""

    loaded: LoadedImage
    pixels: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_item(self, key):
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Detector:
    """A model plus run settings and feature caches; see the module docstring.

    Args:
        model: a ``GroundingDINO`` (with its tokenizer). Its device is used; it is put in eval
            mode while running (and restored after).
        batch_size: images per forward pass (only equal-size images with one prompt share one).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast) or a torch dtype.
        image_size: ``PreprocessConfig`` or a shorter-side int / ``(h, w)`` / None (original size).
        max_pixels: refuse larger images (decompression-bomb guard).
        text_cache_size: captions whose encoded features are kept.
        image_cache_size: images whose encoded features are kept across calls (0: none).
        max_text_len: tokens per caption chunk (default: the model's ``max_text_len``).
    """

    def __init__(
        self,
        model,
        *,
        batch_size: int = 1,
        dtype: str | torch.dtype | None = "fp32",
        image_size: PreprocessConfig | int | tuple[int, int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        text_cache_size: int = 64,
        image_cache_size: int = 0,
        max_text_len: int | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise GdinoError(f"batch size must be a positive int, got {batch_size!r}")
        self.model = model
        self.batch_size = batch_size
        self.dtype = resolve_dtype(dtype)
        check_dtype_on_device(self.dtype, self.device)
        if image_size is None:
            image_size = PreprocessConfig()
        elif not isinstance(image_size, PreprocessConfig):
            image_size = PreprocessConfig(size=image_size, max_size=None if isinstance(image_size, tuple) else round(image_size * 1333 / 800))
        self.preprocess_config = image_size
        self.max_pixels = max_pixels
        self.max_text_len = int(max_text_len or model.config.max_text_len)
        self._text_cache = _LRU(text_cache_size)
        self._image_cache = _LRU(image_cache_size)
        self._prompt_cache = _LRU(256)
        #: counters, for tests and benchmarks: text/image encoder calls and forward passes
        self.stats = {"text_encodes": 0, "image_encodes": 0, "image_cache_hits": 0, "forwards": 0}

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ inputs
    def prompt(self, prompt_or_classes: str | Sequence[str] | Prompt) -> Prompt:
        """Build (and remember) the :class:`Prompt` for a caption or a class list."""
        if isinstance(prompt_or_classes, Prompt):
            return prompt_or_classes
        key = prompt_or_classes if isinstance(prompt_or_classes, str) else ("\0classes",) + tuple(
            prompt_or_classes if isinstance(prompt_or_classes, (list, tuple)) else [prompt_or_classes]
        )
        try:
            found = self._prompt_cache.get_item(key)
        except TypeError:  # unhashable: let build_prompt explain
            found = None
        if found is None:
            found = build_prompt(self.model.tokenizer, prompt_or_classes, self.max_text_len)
            self._prompt_cache.put(key, found)
        return found

    def prompts_for(self, prompt_or_classes: Any, count: int, per_image: bool = False) -> list[Prompt]:
        """``count`` prompts: the same one for every image, or (``per_image``) one given per image."""
        if not per_image:
            return [self.prompt(prompt_or_classes)] * count
        if isinstance(prompt_or_classes, str) or len(prompt_or_classes) != count:
            n = 1 if isinstance(prompt_or_classes, str) else len(prompt_or_classes)
            raise PromptError(f"per_image=True needs one prompt per image: got {n} for {count} images")
        return [self.prompt(p) for p in prompt_or_classes]

    def prepare(self, image: Any, name: str | None = None) -> PreparedImage:
        """Load and preprocess one image (thread-safe; usable from loader threads)."""
        if isinstance(image, PreparedImage):
            return image
        loaded = image if isinstance(image, LoadedImage) else load_image(image, name=name, max_pixels=self.max_pixels)
        return PreparedImage(loaded, preprocess(loaded.image, self.preprocess_config))

    # ------------------------------------------------------------------ public entry points
    def detect(
        self,
        images: Any,
        prompt_or_classes: str | Sequence[str] | Sequence[str | Sequence[str]],
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        *,
        per_image: bool = False,
        remove_combined: bool = True,
        topk: int | None = None,
        nms: float | None = None,
        clip: bool = True,
    ) -> list[Detections]:
        """Detect in every image; see :func:`detect` for the arguments."""
        opts = DecodeOptions(box_threshold, text_threshold, remove_combined, topk, nms, clip)
        items = as_image_list(images)
        prompts = self.prompts_for(prompt_or_classes, len(items), per_image)
        results: list[Detections | None] = [None] * len(items)
        for index, dets in self.run(((i, img, p) for i, (img, p) in enumerate(zip(items, prompts))), opts):
            results[index] = dets
        return results  # type: ignore[return-value]

    def detect_prompts(
        self,
        images: Any,
        prompts: Sequence[str | Sequence[str]],
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        **kwargs: Any,
    ) -> list[list[Detections]]:
        """Several prompts on the same images, encoding each image once.

        Returns ``result[i][j]``: detections of image i for prompt j. Keyword arguments as
        :meth:`detect` (``remove_combined``, ``topk``, ``nms``, ``clip``).
        """
        unknown = set(kwargs) - {"remove_combined", "topk", "nms", "clip"}
        if unknown:
            raise TypeError(f"detect_prompts() got unexpected keyword arguments {sorted(unknown)}")
        opts = DecodeOptions(
            box_threshold, text_threshold, kwargs.get("remove_combined", True), kwargs.get("topk"),
            kwargs.get("nms"), kwargs.get("clip", True),
        )
        if isinstance(prompts, str):
            raise PromptError("detect_prompts() takes a list of prompts; use detect() for one prompt")
        built = [self.prompt(p) for p in prompts]
        if not built:
            raise PromptError("no prompts given")
        prepared = [self.prepare(img) for img in as_image_list(images)]
        results: list[list[Detections]] = [[] for _ in prepared]
        for group in _groups(range(len(prepared)), lambda i: prepared[i].shape, self.batch_size):
            per_prompt = self._run_batch([prepared[i] for i in group], built, opts)
            for j, i in enumerate(group):
                results[i] = [per_prompt[k][j] for k in range(len(built))]
        return results

    def run(self, items: Iterable[tuple[Any, Any, Prompt]], opts: DecodeOptions) -> Iterator[tuple[Any, Detections]]:
        """Streaming core: ``(key, image, prompt)`` items -> ``(key, Detections)``, batch by batch.

        Items are read in windows of ``4 * batch_size``; within a window, images of equal
        preprocessed size and equal prompt are batched. Results come in completion order.
        """
        window: list[tuple[Any, PreparedImage, Prompt]] = []
        size = 1 if self.batch_size == 1 else 4 * self.batch_size
        for key, image, prompt in items:
            window.append((key, self.prepare(image), prompt))
            if len(window) >= size:
                yield from self._run_window(window, opts)
                window = []
        if window:
            yield from self._run_window(window, opts)

    # ------------------------------------------------------------------ internals
    def _run_window(self, window, opts: DecodeOptions):
        for group in _groups(range(len(window)), lambda i: (window[i][1].shape, window[i][2].key), self.batch_size):
            dets = self._run_batch([window[i][1] for i in group], [window[group[0]][2]], opts)[0]
            for i, d in zip(group, dets):
                yield window[i][0], d

    def _run_batch(self, prepared: list[PreparedImage], prompts: list[Prompt], opts: DecodeOptions) -> list[list[Detections]]:
        """Equal-size images, several prompts -> ``[prompt][image]`` detections."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast(self.device, self.dtype):
                image_features = self._encode_images(prepared)
                out = []
                for prompt in prompts:
                    raw = []
                    for chunk in prompt.chunks:
                        input_ids, text = self._encode_text(chunk.caption)
                        res = model.forward_features(image_features, text.expand(len(prepared)))
                        self.stats["forwards"] += 1
                        raw.append((res.logits.float().cpu(), res.boxes.float().cpu(), input_ids))
                    out.append([self._decode(prompt, raw, b, p, opts) for b, p in enumerate(prepared)])
        finally:
            model.train(was_training)
        return out

    def _encode_text(self, caption: str):
        hit = self._text_cache.get_item(caption)
        if hit is not None:
            return hit
        tokenized = self.model.tokenize([caption])
        features = self.model.encode_text(tokenized)
        self.stats["text_encodes"] += 1
        entry = (tokenized.input_ids[0].tolist(), features)
        self._text_cache.put(caption, entry)
        return entry

    def _encode_images(self, prepared: list[PreparedImage]):
        keys = None
        if self._image_cache.size > 0:
            keys = [_pixels_key(p.pixels) for p in prepared]
            hits = [self._image_cache.get_item(k) for k in keys]
            if all(h is not None for h in hits):
                self.stats["image_cache_hits"] += len(hits)
                return hits[0] if len(hits) == 1 else _cat_features(hits)
        pixels = torch.stack([p.pixels for p in prepared]).to(self.device, self.model.dtype, non_blocking=True)
        features = self.model.encode_image(pixels, None)  # equal sizes: no padding
        self.stats["image_encodes"] += len(prepared)
        if keys is not None:
            for i, k in enumerate(keys):
                self._image_cache.put(k, features.select(i) if len(prepared) > 1 else features)
        return features

    def _decode(self, prompt: Prompt, raw, b: int, prepared: PreparedImage, opts: DecodeOptions) -> Detections:
        loaded = prepared.loaded
        boxes_parts, scores_parts, class_parts, labels = [], [], [], []
        if prompt.mode == "classes":
            scores = [class_scores(logits[b], chunk.positive_map) for (logits, _, _), chunk in zip(raw, prompt.chunks)]
            if opts.topk is not None:
                sel = select_topk_chunks(scores, [c.class_indices for c in prompt.chunks], opts.topk)
                keep = sel.scores > opts.box_threshold
                chunk_ids, queries = sel.chunks[keep].tolist(), sel.queries[keep].tolist()
                boxes_parts.append(
                    torch.stack([raw[c][1][b, q] for c, q in zip(chunk_ids, queries)]) if queries else torch.zeros(0, 4)
                )
                scores_parts.append(sel.scores[keep])
                class_parts.append(sel.class_ids[keep])
            else:
                for (_, boxes, _), chunk, sc in zip(raw, prompt.chunks, scores):
                    sel = select_per_query(sc, opts.box_threshold)
                    gmap = torch.as_tensor(chunk.class_indices, dtype=torch.long)
                    boxes_parts.append(boxes[b, sel.queries])
                    scores_parts.append(sel.scores)
                    class_parts.append(gmap[sel.class_ids])
            class_ids = torch.cat(class_parts)
            labels = [prompt.class_names[i] for i in class_ids.tolist()]
        else:
            for (logits, boxes, input_ids), chunk in zip(raw, prompt.chunks):
                ps = decode_phrases(
                    logits[b], input_ids, self.model.tokenizer, opts.box_threshold, opts.text_threshold,
                    remove_combined=opts.remove_combined,
                )
                boxes_parts.append(boxes[b, ps.queries])
                scores_parts.append(ps.scores)
                seg = chunk.segment_classes
                class_parts.append(torch.tensor([seg[i] if 0 <= i < len(seg) else -1 for i in ps.phrase_ids.tolist()], dtype=torch.long))
                labels.extend(ps.labels)
            class_ids = torch.cat(class_parts)
        w, h = loaded.width, loaded.height
        xyxy = cxcywh_to_xyxy(torch.cat(boxes_parts).reshape(-1, 4)) * torch.tensor([w, h, w, h], dtype=torch.float32)
        dets = Detections(xyxy, torch.cat(scores_parts), class_ids, labels, (w, h), list(prompt.class_names), loaded.name)
        if opts.clip:
            dets = dets.clip()
        dets = dets.sort()
        if opts.nms_iou is not None:
            dets = dets.nms(opts.nms_iou)
        return dets


def detect(
    model,
    images: Any,
    prompt_or_classes: str | Sequence[str] | Sequence[str | Sequence[str]],
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    *,
    per_image: bool = False,
    batch_size: int = 1,
    dtype: str | torch.dtype | None = "fp32",
    image_size: PreprocessConfig | int | tuple[int, int] | None = None,
    remove_combined: bool = True,
    topk: int | None = None,
    nms: float | None = None,
    clip: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[Detections]:
    """Find what ``prompt_or_classes`` names in ``images``; one :class:`Detections` per image.

    Args:
        model: a ``GroundingDINO`` with its tokenizer (``gdino.load_model``).
        images: one image or a list: paths, PIL images, numpy ``HxWx3`` uint8 RGB arrays or
            ``CxHxW`` tensors (a ``BxCxHxW`` tensor is B images).
        prompt_or_classes: a caption (``"a cat . a remote control"``; phrase mode: labels are
            the official token-threshold phrases) or a list of class names (classes mode: each
            box gets exactly one class; lists of any length are chunked automatically). With
            ``per_image=True``: a list with one such prompt per image.
        box_threshold: keep boxes scoring above this, in [0, 1].
        text_threshold: phrase mode: token threshold for labels, in [0, 1].
        batch_size: images per forward pass; results do not depend on it.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast on the model's device).
        image_size: None for the official resize (shorter side 800, longer <= 1333); an int
            shorter side, an exact ``(height, width)``, or a ``PreprocessConfig``.
        remove_combined: phrase mode: never merge tokens of different phrases in a label.
        topk: classes mode: keep the ``topk`` best (query, class) pairs (evaluation style).
        nms: IoU for optional class-aware non-maximum suppression (None: off, as the official).
        clip: clip boxes to the image.
        max_pixels: refuse images with more pixels (decompression bombs).

    Returns:
        ``list[Detections]`` in input order, boxes ``xyxy`` in original pixels, best first.
    """
    detector = Detector(model, batch_size=batch_size, dtype=dtype, image_size=image_size, max_pixels=max_pixels)
    return detector.detect(
        images, prompt_or_classes, box_threshold, text_threshold,
        per_image=per_image, remove_combined=remove_combined, topk=topk, nms=nms, clip=clip,
    )


def as_image_list(images: Any) -> list[Any]:
    """One image or a sequence of them -> a list (a 4-D tensor/array is a batch)."""
    if isinstance(images, (list, tuple)):
        out = list(images)
    elif isinstance(images, Tensor) and images.dim() == 4:
        out = list(images.unbind(0))
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        out = list(images)
    elif isinstance(images, (str, Image.Image, np.ndarray, Tensor, LoadedImage, PreparedImage)) or hasattr(images, "__fspath__"):
        out = [images]
    else:
        raise GdinoError(f"images must be an image or a list of images, got {type(images).__name__}")
    if not out:
        raise GdinoError("no images given")
    return out


def _groups(indices: Iterable[int], key, batch_size: int) -> list[list[int]]:
    """Split indices into batches of at most ``batch_size`` sharing ``key`` (first-seen order)."""
    by_key: dict[Any, list[int]] = {}
    for i in indices:
        by_key.setdefault(key(i), []).append(i)
    return [g[s : s + batch_size] for g in by_key.values() for s in range(0, len(g), batch_size)]


def _pixels_key(pixels: Tensor) -> str:
    arr = np.ascontiguousarray(pixels.numpy())
    return f"{tuple(arr.shape)}:" + hashlib.blake2b(arr.view(np.uint8), digest_size=16).hexdigest()


def _cat_features(items: list[Any]) -> Any:
    """Concatenate single-image feature bundles (dataclasses of tensors / tensor lists) on dim 0."""
    first = items[0]
    changes = {}
    for f in fields(first):
        values = [getattr(it, f.name) for it in items]
        if isinstance(values[0], Tensor):
            changes[f.name] = torch.cat(values)
        elif isinstance(values[0], list) and values[0] and isinstance(values[0][0], Tensor):
            changes[f.name] = [torch.cat(parts) for parts in zip(*values)]
    return replace(first, **changes)
