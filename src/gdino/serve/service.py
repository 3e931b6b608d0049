"""``Service``: what the routes share — the detector, the optional segmenter, the batcher, the
metrics and the readiness state — and the steps of one request (read, check, queue, answer)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from gdino.core.detections import Detections
from gdino.errors import GdinoError
from gdino.infer.detector import Detector
from gdino.infer.prompts import Prompt
from gdino.infer.report import result_document
from gdino.serve.batcher import Batcher
from gdino.serve.config import ServeConfig
from gdino.serve.forward import Item, detect_mixed
from gdino.serve.inputs import build_prompt, read_image
from gdino.serve.metrics import Metrics
from gdino.serve.problems import Problem
from gdino.serve.schemas import DetectOptionsIn

logger = logging.getLogger("gdino.serve")

OPTION_FIELDS = ("box_threshold", "text_threshold", "nms_iou", "max_detections", "image_size")


class Service:
    """One loaded model behind the HTTP routes."""

    def __init__(self, config: ServeConfig, detector: Detector | None = None, segmenter: Any = None) -> None:
        self.config = config
        self.detector = detector
        self.segmenter = segmenter
        self.metrics = Metrics(config.max_batch)
        self.batcher: Batcher | None = None
        self.ready = False
        self.failure: str | None = None

    @property
    def segmenter_name(self) -> str | None:
        return None if self.segmenter is None else str(getattr(self.segmenter, "name", "segmenter"))

    async def start(self) -> None:
        """Load the model (when not given), start the batcher, warm up; then ready."""
        try:
            if self.detector is None:
                self.detector = await run_in_threadpool(
                    Detector.from_pretrained, self.config.weights, self.config.device
                )
            self.batcher = Batcher(self.detector, self.config, self.metrics, self.segmenter)
            await self.batcher.start()
            if self.config.warmup:
                await self.batcher.in_model_thread(self._warm_up)
            self.ready = True
            logger.info("ready: %s on %s", self.config.weights, self.detector.device)
        except Exception as e:  # noqa: BLE001 - reported by /readyz (and logged), the process stays up
            self.failure = str(e).splitlines()[0] if str(e) else type(e).__name__
            logger.error("start-up failed: %s", self.failure)

    async def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.close(self.config.timeout_s)

    def _warm_up(self) -> None:
        """One forward (and one mask) on a synthetic image: first-call costs paid before traffic."""
        assert self.detector is not None
        opts = self.detector.options
        image = Image.fromarray(np.full((480, 640, 3), 127, dtype=np.uint8))
        item = Item(self.detector.prepare(image, "warm-up", opts), self.detector.prompt("object"), opts)
        dets = detect_mixed(self.detector, [item])
        if self.segmenter is not None:
            self.segmenter.segment(np.asarray(image), dets[0][:1])

    # ------------------------------------------------------------------ one request
    def require_ready(self) -> Detector:
        if not self.ready or self.detector is None or self.batcher is None:
            raise Problem(503, self.failure or "the model is still loading; see /readyz")
        return self.detector

    async def detect(
        self, data: bytes, name: str, fields: DetectOptionsIn, segment: bool = False
    ) -> tuple[Prompt, Any, Detections]:
        """Check everything, queue the request, wait for its detections."""
        detector = self.require_ready()
        assert self.batcher is not None
        if segment and self.segmenter is None:
            raise Problem(501, "no segmenter configured: start the server with --segmenter NAME (e.g. sam-vit-b)")
        if fields.image_size is not None and fields.image_size > self.config.max_image_size:
            raise Problem(
                400, f"image_size {fields.image_size} is over the server's limit of {self.config.max_image_size}"
            )
        prompt = build_prompt(detector, fields.prompt, fields.classes, self.config)
        overrides = {k: getattr(fields, k) for k in OPTION_FIELDS if getattr(fields, k) is not None}
        try:
            opts = detector.resolve(None, overrides)
        except GdinoError as e:
            raise Problem(400, str(e)) from None
        loaded = await run_in_threadpool(read_image, data, name, self.config.max_pixels)
        prepared = await run_in_threadpool(detector.prepare, loaded, None, opts)
        dets = await self.batcher.submit(Item(prepared, prompt, opts), segment)
        return prompt, opts, dets

    def document(
        self, prompt: Prompt, caption: str | None, opts: Any, dets: Detections, segment: bool
    ) -> dict[str, Any]:
        extra = {"segmenter": self.segmenter_name} if segment else None
        return result_document(self.config.weights, prompt, caption, opts, [dets], [], extra)

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "weights": c.weights,
            "ready": self.ready,
            "device": str(self.detector.device) if self.detector is not None else None,
            "segmenter": self.segmenter_name,
            "defaults": self.detector.options.to_dict() if self.detector is not None else None,
            "batching": {"max_batch": c.max_batch, "max_wait_ms": c.max_wait_ms, "queue_size": c.queue_size},
            "limits": {
                "max_body_bytes": c.max_body_bytes,
                "max_pixels": c.max_pixels,
                "max_classes": c.max_classes,
                "max_prompt_tokens": c.max_prompt_tokens,
                "max_image_size": c.max_image_size,
                "timeout_s": c.timeout_s,
            },
            "api_key_required": c.api_key is not None,
        }
