"""``Detector``: the predictor object (model + tokenizer + preprocessing + caches), the way
segment-anything splits ``Sam`` (an nn.Module) from ``SamPredictor``.

How it runs:

- **images** of any kind are loaded (:mod:`gdino.core.images`) and preprocessed officially
  (:mod:`gdino.core.preprocess`).
- **batching never changes a result**: only images with the same preprocessed size *and* the
  same prompt share a batch, so no image is ever padded; others run separately.
- **text cache**: each caption is encoded once per :class:`Detector` (a whole call, or a whole
  folder for ``gdino label``, or a server's lifetime) and expanded over the batch.
- **image side once**: an image batch is encoded once and reused for every chunk of a long class
  list and, in :meth:`Detector.detect_prompts`, for every prompt. With ``image_cache_size > 0`` a
  :class:`Detector` also keeps the last images' features across calls.
- **long class lists** are split into chunks (:mod:`gdino.infer.prompts`); results are merged.
- **precision**: ``dtype`` fp16/bf16 runs under ``torch.autocast``; decoding is float32. A model
  whose weights are bf16 (``Detector.from_pretrained(..., dtype="bf16")`` on the CPU) runs in bf16.
- **options**: one :class:`DetectOptions` per detector, overridable per call with the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gdino.core.detections import Detections
from gdino.core.images import LoadedImage, load_image
from gdino.core.preprocess import PreprocessConfig, preprocess
from gdino.core.runtime import autocast, check_dtype_on_device, resolve_device, resolve_dtype
from gdino.errors import GdinoError, PromptError
from gdino.infer.assemble import RawChunk, to_detections
from gdino.infer.cache import LRU, cat_features, pixels_key
from gdino.infer.options import DetectOptions
from gdino.infer.prompts import Prompt, build_prompt
from gdino.weights.load import load_model

PromptInput = str | Sequence[str] | Prompt


class Segmenter(Protocol):
    """What :meth:`Detector.segment` needs from a segmenter (``gdino.segment.build_segmenter``)."""

    def segment(self, image: np.ndarray, detections: Detections) -> Detections: ...


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """A loaded image and its preprocessed tensor ``[3, H', W']`` (CPU, float32)."""

    loaded: LoadedImage
    pixels: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])


class Detector:
    """A model plus detection options and feature caches; see the module docstring.

    Args:
        model: a ``GroundingDINO`` with its tokenizer (``gdino.load_model``). Its device is used;
            it is put in eval mode while running (and restored after).
        options: the default :class:`DetectOptions`; keyword arguments override single fields
            (``Detector(model, box_threshold=0.3, batch_size=4)``).
        text_cache_size: captions whose encoded features are kept.
        image_cache_size: images whose encoded features are kept across calls (0: none).
        max_text_len: tokens per caption chunk (default: the model's ``max_text_len``).
    """

    def __init__(
        self,
        model: Any,
        options: DetectOptions | None = None,
        *,
        text_cache_size: int = 64,
        image_cache_size: int = 0,
        max_text_len: int | None = None,
        **overrides: Any,
    ) -> None:
        self.model = model
        self.options = self.resolve(options or DetectOptions(), overrides)
        self.max_text_len = int(max_text_len or model.config.max_text_len)
        self._text_cache: LRU[str, tuple[list[int], Any]] = LRU(text_cache_size)
        self._image_cache: LRU[str, Any] = LRU(image_cache_size)
        self._prompt_cache: LRU[Hashable, Prompt] = LRU(256)
        #: counters, for tests and benchmarks: text/image encoder calls and forward passes
        self.stats = {"text_encodes": 0, "image_encodes": 0, "image_cache_hits": 0, "forwards": 0}

    @classmethod
    def from_pretrained(
        cls,
        weights: str,
        device: str | torch.device | None = None,
        options: DetectOptions | None = None,
        **overrides: Any,
    ) -> Detector:
        """Load ``weights`` (hub name, ``.pth``, HF folder, ``.safetensors``) onto ``device`` (None: auto).

        With ``dtype="bf16"`` on the CPU the weights themselves are stored in bf16: the forward then
        runs in bf16 without autocast's per-layer casts (2.0x the fp32 forward on an AMX CPU, against
        1.65x under autocast; benchmarks/RESULTS.md), and calls of this detector always run in bf16.
        Elsewhere the weights stay float32 and ``dtype`` is autocast.
        """
        dev = resolve_device(device)
        dtype = resolve_dtype(overrides.get("dtype", (options or DetectOptions()).dtype))
        weights_dtype = torch.bfloat16 if dev.type == "cpu" and dtype == torch.bfloat16 else None
        return cls(load_model(weights, device=dev, dtype=weights_dtype), options, **overrides)

    def resolve(self, options: DetectOptions | None, overrides: dict[str, Any]) -> DetectOptions:
        """``options`` (default: this detector's) with ``overrides`` applied, checked for this device."""
        base = options or self.options
        try:
            opts = replace(base, **overrides) if overrides else base
        except TypeError as e:
            raise TypeError(f"unknown detection option: {e}") from None
        check_dtype_on_device(opts.torch_dtype, self.device)
        return opts

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    # ------------------------------------------------------------------ inputs
    def prompt(self, prompt_or_classes: PromptInput, options: DetectOptions | None = None) -> Prompt:
        """Build (and remember) the :class:`Prompt` for a caption or a class list (chunked by
        ``classes_per_prompt`` of ``options``, default this detector's)."""
        if isinstance(prompt_or_classes, Prompt):
            return prompt_or_classes
        per_chunk = (options or self.options).classes_per_prompt
        key: Hashable
        if isinstance(prompt_or_classes, str):
            key = prompt_or_classes
        else:
            names = prompt_or_classes if isinstance(prompt_or_classes, (list, tuple)) else [prompt_or_classes]
            key = ("\0classes", per_chunk, *names)
        try:
            found = self._prompt_cache.get(key)
        except TypeError:  # unhashable: let build_prompt explain
            found = None
        if found is None:
            found = build_prompt(self.tokenizer, prompt_or_classes, self.max_text_len, per_chunk)
            self._prompt_cache.put(key, found)
        return found

    def prompts_for(
        self, prompt_or_classes: Any, count: int, per_image: bool = False, options: DetectOptions | None = None
    ) -> list[Prompt]:
        """``count`` prompts: the same one for every image, or (``per_image``) one given per image."""
        if not per_image:
            return [self.prompt(prompt_or_classes, options)] * count
        if isinstance(prompt_or_classes, str) or len(prompt_or_classes) != count:
            n = 1 if isinstance(prompt_or_classes, str) else len(prompt_or_classes)
            raise PromptError(f"per_image=True needs one prompt per image: got {n} for {count} images")
        return [self.prompt(p, options) for p in prompt_or_classes]

    def prepare(self, image: Any, name: str | None = None, options: DetectOptions | None = None) -> PreparedImage:
        """Load and preprocess one image (thread-safe; usable from loader threads)."""
        if isinstance(image, PreparedImage):
            return image
        opts = options or self.options
        loaded = image if isinstance(image, LoadedImage) else load_image(image, name=name, max_pixels=opts.max_pixels)
        return PreparedImage(loaded, preprocess(loaded.image, opts.preprocess))

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.options.preprocess

    # ------------------------------------------------------------------ public entry points
    def detect(
        self,
        images: Any,
        prompt_or_classes: PromptInput | Sequence[PromptInput],
        options: DetectOptions | None = None,
        *,
        per_image: bool = False,
        **overrides: Any,
    ) -> list[Detections]:
        """Find what ``prompt_or_classes`` names in ``images``; one :class:`Detections` per image.

        Args:
            images: one image or a list: paths, PIL images, numpy ``HxWx3`` uint8 RGB arrays or
                ``CxHxW`` tensors (a ``BxCxHxW`` tensor is B images).
            prompt_or_classes: a caption (``"a cat . a remote control"``; phrase mode: labels are
                the official token-threshold phrases) or a list of class names (classes mode: each
                box gets exactly one class; lists of any length are chunked automatically). With
                ``per_image=True``: a list with one such prompt per image.
            options: replaces this detector's :class:`DetectOptions` for this call.
            overrides: single :class:`DetectOptions` fields for this call (``box_threshold=0.3``).

        Returns:
            ``list[Detections]`` in input order, boxes ``xyxy`` in original pixels, best first.
        """
        return self._collect(images, prompt_or_classes, options, per_image, overrides, None)

    def segment(
        self,
        images: Any,
        prompt_or_classes: PromptInput | Sequence[PromptInput],
        segmenter: Segmenter,
        options: DetectOptions | None = None,
        *,
        per_image: bool = False,
        **overrides: Any,
    ) -> list[Detections]:
        """Grounded-SAM: :meth:`detect`, then ``segmenter`` masks every box of each image.

        Returns Detections with ``masks`` ``[N, H, W]`` bool at the original size and
        ``mask_scores`` (the segmenter's predicted IoU); ``scores`` stay the detector's.
        """
        return self._collect(images, prompt_or_classes, options, per_image, overrides, segmenter)

    def detect_prompts(
        self, images: Any, prompts: Sequence[PromptInput], options: DetectOptions | None = None, **overrides: Any
    ) -> list[list[Detections]]:
        """Several prompts on the same images, encoding each image once: ``result[i][j]`` is
        image i with prompt j."""
        opts = self.resolve(options, overrides)
        if isinstance(prompts, str):
            raise PromptError("detect_prompts() takes a list of prompts; use detect() for one prompt")
        built = [self.prompt(p, opts) for p in prompts]
        if not built:
            raise PromptError("no prompts given")
        prepared = [self.prepare(img, options=opts) for img in as_image_list(images)]
        results: list[list[Detections]] = [[] for _ in prepared]
        for group in groups(range(len(prepared)), lambda i: prepared[i].shape, opts.batch_size):
            per_prompt = self._run_batch([prepared[i] for i in group], built, opts)
            for j, i in enumerate(group):
                results[i] = [per_prompt[k][j] for k in range(len(built))]
        return results

    def run(
        self,
        items: Iterable[tuple[Any, Any, Prompt]],
        options: DetectOptions | None = None,
        segmenter: Segmenter | None = None,
    ) -> Iterator[tuple[Any, Detections]]:
        """Streaming core: ``(key, image, prompt)`` items -> ``(key, Detections)``, batch by batch.

        Items are read in windows of ``4 * batch_size``; within a window, images of equal
        preprocessed size and equal prompt are batched. Results come in completion order. With a
        ``segmenter``, each image's boxes are masked before it is yielded.
        """
        opts = options or self.options
        window: list[tuple[Any, PreparedImage, Prompt]] = []
        size = 1 if opts.batch_size == 1 else 4 * opts.batch_size
        for key, image, prompt in items:
            window.append((key, self.prepare(image, options=opts), prompt))
            if len(window) >= size:
                yield from self._run_window(window, opts, segmenter)
                window = []
        if window:
            yield from self._run_window(window, opts, segmenter)

    # ------------------------------------------------------------------ internals
    def _collect(
        self,
        images: Any,
        prompt_or_classes: Any,
        options: DetectOptions | None,
        per_image: bool,
        overrides: dict[str, Any],
        segmenter: Segmenter | None,
    ) -> list[Detections]:
        opts = self.resolve(options, overrides)
        items = as_image_list(images)
        prompts = self.prompts_for(prompt_or_classes, len(items), per_image, opts)
        results: list[Detections | None] = [None] * len(items)
        for index, dets in self.run(((i, img, p) for i, (img, p) in enumerate(zip(items, prompts))), opts, segmenter):
            results[index] = dets
        return [r for r in results if r is not None]

    def _run_window(
        self, window: list[tuple[Any, PreparedImage, Prompt]], opts: DetectOptions, segmenter: Segmenter | None
    ) -> Iterator[tuple[Any, Detections]]:
        for group in groups(range(len(window)), lambda i: (window[i][1].shape, window[i][2].key), opts.batch_size):
            dets = self._run_batch([window[i][1] for i in group], [window[group[0]][2]], opts)[0]
            for i, d in zip(group, dets):
                if segmenter is not None:
                    d = segmenter.segment(np.asarray(window[i][1].loaded.image), d)
                yield window[i][0], d

    def _run_batch(
        self, prepared: list[PreparedImage], prompts: list[Prompt], opts: DetectOptions
    ) -> list[list[Detections]]:
        """Equal-size images, several prompts -> ``[prompt][image]`` detections."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast(self.device, opts.torch_dtype):
                image_features = self.encode_images(prepared)
                out = []
                for prompt in prompts:
                    raw: list[RawChunk] = []
                    for chunk in prompt.chunks:
                        input_ids, text = self.encode_text(chunk.caption)
                        res = model.forward_features(image_features, text.expand(len(prepared)))
                        self.stats["forwards"] += 1
                        raw.append((res.logits.float().cpu(), res.boxes.float().cpu(), input_ids))
                    out.append(
                        [to_detections(prompt, raw, b, p.loaded, opts, self.tokenizer) for b, p in enumerate(prepared)]
                    )
        finally:
            model.train(was_training)
        return out

    def encode_text(self, caption: str) -> tuple[list[int], Any]:
        """``(input ids, TextFeatures)`` of one caption chunk, from the text cache when seen before
        (public for batchers that build their own forwards, e.g. ``gdino.serve``)."""
        hit = self._text_cache.get(caption)
        if hit is not None:
            return hit
        tokenized = self.model.tokenize([caption])
        features = self.model.encode_text(tokenized)
        self.stats["text_encodes"] += 1
        entry = (tokenized.input_ids[0].tolist(), features)
        self._text_cache.put(caption, entry)
        return entry

    def encode_images(self, prepared: list[PreparedImage]) -> Any:
        """ImageFeatures of equal-size prepared images (the image cache is used when enabled)."""
        keys = None
        if self._image_cache.size > 0:
            keys = [pixels_key(p.pixels) for p in prepared]
            hits = [self._image_cache.get(k) for k in keys]
            if all(h is not None for h in hits):
                self.stats["image_cache_hits"] += len(hits)
                return hits[0] if len(hits) == 1 else cat_features(hits)
        pixels = torch.stack([p.pixels for p in prepared]).to(self.device, self.model.dtype, non_blocking=True)
        features = self.model.encode_image(pixels, None)  # equal sizes: no padding
        self.stats["image_encodes"] += len(prepared)
        if keys is not None:
            for i, k in enumerate(keys):
                self._image_cache.put(k, features.select(i) if len(prepared) > 1 else features)
        return features


def as_image_list(images: Any) -> list[Any]:
    """One image or a sequence of them -> a list (a 4-D tensor/array is a batch)."""
    if isinstance(images, (list, tuple)):
        out = list(images)
    elif isinstance(images, Tensor) and images.dim() == 4:
        out = list(images.unbind(0))
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        out = list(images)
    elif isinstance(images, (str, Image.Image, np.ndarray, Tensor, LoadedImage, PreparedImage)) or hasattr(
        images, "__fspath__"
    ):
        out = [images]
    else:
        raise GdinoError(f"images must be an image or a list of images, got {type(images).__name__}")
    if not out:
        raise GdinoError("no images given")
    return out


def groups(indices: Iterable[int], key: Callable[[int], Hashable], batch_size: int) -> list[list[int]]:
    """Split indices into batches of at most ``batch_size`` sharing ``key`` (first-seen order)."""
    by_key: dict[Hashable, list[int]] = {}
    for i in indices:
        by_key.setdefault(key(i), []).append(i)
    return [g[s : s + batch_size] for g in by_key.values() for s in range(0, len(g), batch_size)]
