"""Request inputs made safe: image bytes (size, pixel count, format, truncation) and prompts
(empty, punctuation only, too many classes or tokens). Each failure is a :class:`Problem` with
the status a client can act on: 413 for too large, 400 for bad content."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError

from gdino.core.images import LoadedImage, load_image
from gdino.errors import GdinoError
from gdino.infer.detector import Detector
from gdino.infer.prompts import Prompt
from gdino.serve.config import ServeConfig
from gdino.serve.problems import Problem


def decode_base64(data: str, max_bytes: int) -> bytes:
    """Base64 text (optionally a ``data:image/...;base64,`` URL) -> bytes; 413 past ``max_bytes``."""
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if ";base64" not in head:
            raise Problem(400, "image: a data URL must be base64-encoded")
    if len(data) > max_bytes * 4 // 3 + 8:
        raise Problem(413, f"image: more than {max_bytes:,} bytes")
    if ":" in data[:16]:  # not in the base64 alphabet: a URL (http:, file:, s3:...)
        raise Problem(400, "image: give the image itself (base64), the server fetches no URLs or paths")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(400, "image: not valid base64") from None


def read_image(data: bytes, name: str, max_pixels: int) -> LoadedImage:
    """Image file bytes -> RGB :class:`LoadedImage`; the pixel count is checked before decoding."""
    if not data:
        raise Problem(400, f"{name}: empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise Problem(
                    413,
                    f"{name}: {img.width}x{img.height} = {img.width * img.height:,} pixels exceeds "
                    f"the limit of {max_pixels:,} (possible decompression bomb)",
                )
            img.load()
    except Problem:
        raise
    except Image.DecompressionBombError:
        raise Problem(413, f"{name}: too many pixels (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise Problem(400, f"{name}: not an image (unknown format or corrupt)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise Problem(400, f"{name}: corrupt or truncated image ({msg})") from None
    try:
        return load_image(img, name=name, max_pixels=max_pixels)
    except GdinoError as e:
        raise Problem(400, str(e)) from None


def build_prompt(detector: Detector, prompt: str | None, classes: Sequence[str] | None, config: ServeConfig) -> Prompt:
    """Exactly one of a caption or a class list -> :class:`Prompt`, within the configured caps."""
    if (prompt is None) == (classes is None):
        raise Problem(400, "give exactly one of 'prompt' (a caption) or 'classes' (a list of names)")
    if classes is not None:
        if len(classes) > config.max_classes:
            raise Problem(400, f"classes: {len(classes)} names, the limit is {config.max_classes}")
        text_len = sum(len(c) for c in classes)
    else:
        text_len = len(prompt or "")
    if text_len > 16 * config.max_prompt_tokens:  # cheap guard before tokenizing
        raise Problem(400, f"prompt too long: over {config.max_prompt_tokens} tokens")
    try:
        built = detector.prompt(list(classes) if classes is not None else prompt)  # type: ignore[arg-type]
    except GdinoError as e:
        raise Problem(400, str(e)) from None
    tokens = sum(len(detector.tokenizer(c.caption)["input_ids"]) for c in built.chunks)
    if tokens > config.max_prompt_tokens:
        raise Problem(400, f"prompt too long: {tokens} tokens, the limit is {config.max_prompt_tokens}")
    return built
