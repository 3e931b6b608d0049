"""Request bodies (pydantic, unknown fields refused with 422) and the Hugging Face answer shape."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Fraction = Field(default=None, ge=0.0, le=1.0)


class DetectOptionsIn(BaseModel):
    """The per-request detection options (the names of :class:`gdino.DetectOptions`); unset: the
    server's defaults. ``image_size`` changes the forward pass, so only requests with the same
    ``image_size`` share a batch; the others only change decoding."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, description="a caption: 'a cat . a remote control'")
    classes: list[str] | None = Field(default=None, description="class names (each box gets one)")
    box_threshold: float | None = Fraction
    text_threshold: float | None = Fraction
    nms_iou: float | None = Fraction
    max_detections: int | None = Field(default=None, ge=1)
    image_size: int | None = Field(default=None, ge=32, description="shorter side of the resized image")


class DetectJSON(DetectOptionsIn):
    """``POST /v1/detect`` and ``/v1/segment`` as JSON: the image as base64 (or a data URL)."""

    image: str = Field(description="the image file, base64-encoded (a data: URL is accepted)")
    name: str | None = Field(default=None, max_length=200, description="the image's name in the result")


class DetectForm(DetectOptionsIn):
    """The same as multipart form fields (``classes`` comma-separated or repeated)."""

    name: str | None = Field(default=None, max_length=200)


class HFParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate_labels: list[str] | str = Field(description="class names (a list, or one comma-separated string)")
    threshold: float | None = Fraction
    top_k: int | None = Field(default=None, ge=1)


class HFRequest(BaseModel):
    """The Hugging Face ``zero-shot-object-detection`` task input."""

    model_config = ConfigDict(extra="forbid")

    inputs: str = Field(description="the image, base64-encoded")
    parameters: HFParameters


class HFBox(BaseModel):
    xmin: int
    ymin: int
    xmax: int
    ymax: int


class HFDetection(BaseModel):
    label: str
    score: float
    box: HFBox
