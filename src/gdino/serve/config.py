"""``ServeConfig``: every setting of the HTTP service (the flags of ``gdino serve``)."""

from __future__ import annotations

from dataclasses import dataclass

from gdino.core.images import DEFAULT_MAX_PIXELS
from gdino.errors import GdinoError


@dataclass(frozen=True)
class ServeConfig:
    """How the service batches, what it accepts and who may call it.

    Attributes:
        weights: the checkpoint name reported in results (and loaded when no detector is given).
        device: where the model runs ("auto": the best available).
        max_batch: at most this many requests share one forward pass.
        max_wait_ms: after the first request of a batch arrives, wait at most this long for more
            (0: never wait; batches still form from requests that queued during a forward).
        queue_size: requests waiting for the model; more get 429 with ``Retry-After``.
        timeout_s: a request not answered within this many seconds gets 504 (it is dropped from
            the queue if it has not started).
        max_body_bytes: larger request bodies get 413.
        max_pixels: images with more pixels get 413 (decompression-bomb guard).
        max_classes: class lists longer than this get 400.
        max_prompt_tokens: prompts of more tokens (all passes together) get 400.
        max_image_size: the largest ``image_size`` (shorter side) a request may ask for.
        api_key: when set, every API route needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
        cors_origins: origins allowed by CORS (empty: CORS off, same-origin only).
        warmup: run one detection at start-up, before ``/readyz`` says ready.
    """

    weights: str = "grounding-dino-tiny"
    device: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    queue_size: int = 64
    timeout_s: float = 30.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_classes: int = 256
    max_prompt_tokens: int = 1024
    max_image_size: int = 1333
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    warmup: bool = True

    def __post_init__(self) -> None:
        for name in (
            "max_batch",
            "queue_size",
            "max_body_bytes",
            "max_pixels",
            "max_classes",
            "max_prompt_tokens",
            "max_image_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GdinoError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.max_wait_ms < 0:
            raise GdinoError(f"max-wait-ms must be >= 0, got {self.max_wait_ms!r}")
        if self.timeout_s <= 0:
            raise GdinoError(f"timeout must be > 0 seconds, got {self.timeout_s!r}")
        if self.api_key is not None and not self.api_key:
            raise GdinoError("api-key must not be empty")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
