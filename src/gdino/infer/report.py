"""The JSON document of a detection run: the output of ``gdino detect`` / ``gdino segment`` and the
body of the service's ``/v1/detect`` and ``/v1/segment`` answers (one schema for all of them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gdino.core.detections import Detections
from gdino.infer.options import DetectOptions
from gdino.infer.prompts import Prompt


def result_document(
    weights: str,
    prompt: Prompt,
    caption: str | None,
    options: DetectOptions,
    results: Sequence[Detections],
    errors: Sequence[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"weights", **extra, "mode", "prompt", "classes", "settings", "results", "errors"}``.

    ``caption`` is the prompt text as the user gave it (phrase mode; omitted in classes mode);
    keys whose value is None are left out.
    """
    classes_mode = prompt.mode == "classes"
    doc = {
        "weights": weights,
        **(extra or {}),
        "mode": prompt.mode,
        "prompt": None if classes_mode else caption,
        "classes": list(prompt.class_names),
        "settings": options.to_dict(),
        "results": [r.to_dict() for r in results],
        "errors": list(errors),
    }
    return {k: v for k, v in doc.items() if v is not None}
