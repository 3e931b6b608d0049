"""Segmenter names (no torch import: the CLI lists them in ``--help``)."""

from __future__ import annotations

import difflib

from gdino.errors import GdinoError

#: every accepted segmenter name
SEGMENTERS = (
    "sam-vit-b",
    "sam-vit-l",
    "sam-vit-h",
    "sam2.1-hiera-t",
    "sam2.1-hiera-s",
    "sam2.1-hiera-b+",
    "sam2.1-hiera-l",
    "sam-tiny",
)

_ALIASES = {
    "vit-b": "sam-vit-b",
    "vit-l": "sam-vit-l",
    "vit-h": "sam-vit-h",
    "sam": "sam-vit-h",
    "sam2": "sam2.1-hiera-l",
    "sam2.1-hiera-tiny": "sam2.1-hiera-t",
    "sam2.1-hiera-small": "sam2.1-hiera-s",
    "sam2.1-hiera-base-plus": "sam2.1-hiera-b+",
    "sam2.1-hiera-large": "sam2.1-hiera-l",
}


def canonical_name(name: str) -> str:
    """The canonical segmenter name, or a one-line :class:`GdinoError` with a suggestion."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in SEGMENTERS:
        return key
    close = difflib.get_close_matches(key, SEGMENTERS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise GdinoError(f"unknown segmenter {name!r}{hint}; choose from {', '.join(SEGMENTERS)}")
