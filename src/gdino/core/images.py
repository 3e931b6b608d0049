"""Loading images of any kind into 8-bit RGB PIL images, with one-line errors.

Accepted inputs (:data:`ImageInput`):

- a path (``str`` or :class:`os.PathLike`) to any file Pillow can read;
- the bytes of such a file (``bytes``; e.g. read by Ray Data from any filesystem);
- a :class:`PIL.Image.Image` in any mode;
- a numpy array ``HxW`` (grayscale) or ``HxWxC`` with C in 1, 3, 4 (RGB/RGBA order), of dtype
  uint8, uint16 (scaled by 1/257), bool, or float in [0, 1];
- a torch tensor ``CxH xW`` / ``HxW`` (torchvision's convention), uint8 or float in [0, 1].

Conversions: EXIF orientation is applied; grayscale, palette, CMYK and other modes become RGB;
transparent images are composited over white; 16-bit and 32-bit integer images are scaled to
8 bits (not clipped). Images with more than ``max_pixels`` pixels are refused before decoding
(decompression-bomb guard). Every failure is an :class:`gdino.errors.InputImageError` whose
message names the image and says what was wrong.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from gdino.errors import InputImageError

#: Default pixel limit (width x height) above which an image is refused; 16k x 16k.
DEFAULT_MAX_PIXELS = 16384 * 16384

#: File extensions that ``gdino label`` treats as images (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm"}
)

_PIL_LIMIT_LOCK = threading.Lock()

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for preprocessing: 8-bit RGB, orientation applied.

    Attributes:
        image: the RGB PIL image (``size`` is the original size as the user sees it).
        name: the path for files, else ``"<kind #i>"``; used in messages and outputs.
        path: the file path, or None for in-memory images.
    """

    image: Image.Image
    name: str
    path: str | None = None

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def load_image(
    source: ImageInput, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Load one image of any accepted kind as 8-bit RGB (see the module docstring).

    Args:
        source: path, PIL image, numpy array or torch tensor.
        name: how to call the image in messages (default: its path, or its kind).
        max_pixels: refuse images with more pixels than this (None: no limit).

    Raises:
        InputImageError: missing, empty, unreadable, truncated, too large or oddly shaped input.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return LoadedImage(_open_file(path, name or path, max_pixels), name or path, path)
    label = name or f"<{type(source).__name__}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputImageError(f"{label}: empty file (0 bytes)")
        return LoadedImage(_decode_checked(data, label, max_pixels), label)
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, label, max_pixels)
        return LoadedImage(to_rgb(ImageOps.exif_transpose(source), label), label)
    if isinstance(source, np.ndarray):
        return LoadedImage(_from_array(source, label, max_pixels), label)
    if isinstance(source, torch.Tensor):
        return LoadedImage(_from_tensor(source, label, max_pixels), label)
    raise InputImageError(
        f"{label}: unsupported image type {type(source).__name__}; "
        "give a path, a PIL image, a numpy HxWx3 uint8 array or a CxHxW tensor"
    )


def _check_pixels(width: int, height: int, name: str, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise InputImageError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise InputImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (possible decompression bomb); raise max_pixels if it is genuine"
        )


def _open_file(path: str, name: str, max_pixels: int | None) -> Image.Image:
    p = Path(path)
    if not p.exists():
        raise InputImageError(f"{name}: file not found")
    if p.is_dir():
        raise InputImageError(f"{name}: is a folder, not an image")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise InputImageError(f"{name}: cannot read ({e.strerror or e})") from e
    if size == 0:
        raise InputImageError(f"{name}: empty file (0 bytes)")
    return _decode_checked(p, name, max_pixels)


def _decode_checked(p: Path | bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Decode a file or its bytes; every Pillow failure becomes a one-line :class:`InputImageError`."""
    try:
        try:
            return _decode(p, name, max_pixels)
        except Image.DecompressionBombError:
            if max_pixels is not None and max_pixels <= 2 * (Image.MAX_IMAGE_PIXELS or 0):
                raise
            # Our limit is the one that counts: retry with Pillow's own limit lifted.
            with _PIL_LIMIT_LOCK:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    return _decode(p, name, max_pixels)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except InputImageError:
        raise
    except Image.DecompressionBombError as e:
        raise InputImageError(
            f"{name}: too many pixels (possible decompression bomb), over Pillow's limit of "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,}"
        ) from e
    except UnidentifiedImageError as e:
        raise InputImageError(f"{name}: not an image Pillow can read (corrupt or unknown format)") from e
    except PermissionError as e:
        raise InputImageError(f"{name}: permission denied") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated and damaged data as OSError ("image file is truncated"),
        # SyntaxError (bad headers) or ValueError.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputImageError(f"{name}: corrupt or truncated image ({msg})") from e


def _decode(p: Path | bytes, name: str, max_pixels: int | None) -> Image.Image:
    with warnings.catch_warnings():
        # We apply our own pixel limit; Pillow's check would only warn below twice its limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(p) if isinstance(p, bytes) else p) as img:
            _check_pixels(img.width, img.height, name, max_pixels)
            img.load()
            return to_rgb(ImageOps.exif_transpose(img), name)


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Any PIL mode -> 8-bit RGB: scale 16/32-bit data, composite transparency over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode), mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputImageError(f"{name}: cannot convert image mode {mode!r} to RGB ({e})") from e


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    arr = np.asarray(arr)
    if mode == "F" or arr.dtype.kind == "f":
        a = np.nan_to_num(arr.astype(np.float64))
        hi = a.max() if a.size else 0.0
        if hi > 1.0:  # not a [0, 1] image: stretch its range
            lo = a.min()
            a = (a - lo) / max(hi - lo, 1e-12)
        return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    a = arr.astype(np.int64)
    hi = int(a.max()) if a.size else 0
    if mode.startswith("I;16") or arr.dtype == np.uint16 or hi > 255:
        if hi <= 65535 and a.min() >= 0:
            return ((a * 255 + 32767) // 65535).astype(np.uint8)  # full 16-bit range -> 8 bits
        lo = int(a.min())
        return ((a - lo) * 255 // max(hi - lo, 1)).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def _from_array(arr: np.ndarray, name: str, max_pixels: int | None) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputImageError(
            f"{name}: array of shape {arr.shape} is not an image; expected HxW, HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    _check_pixels(arr.shape[1], arr.shape[0], name, max_pixels)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputImageError(f"{name}: float image contains NaN or infinity")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = _scale_to_uint8(arr, "I;16")
    elif arr.dtype != np.uint8:
        if arr.dtype.kind in "iu" and arr.size and arr.min() >= 0 and arr.max() <= 255:
            arr = arr.astype(np.uint8)
        else:
            raise InputImageError(
                f"{name}: unsupported array dtype {arr.dtype}; use uint8 (0-255), uint16 or float in [0, 1]"
            )
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    mode = "RGB" if arr.shape[2] == 3 else "RGBA"
    return to_rgb(Image.fromarray(arr, mode=mode), name)


def _from_tensor(t, name: str, max_pixels: int | None) -> Image.Image:
    t = t.detach().cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 3 and t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
        arr = t.numpy()  # looks like HWC
    elif t.dim() == 3 and t.shape[0] in (1, 3, 4):
        arr = t.permute(1, 2, 0).numpy()
    elif t.dim() == 2:
        arr = t.numpy()
    else:
        raise InputImageError(
            f"{name}: tensor of shape {tuple(t.shape)} is not an image; expected CxHxW with C in 1, 3, 4"
        )
    if arr.dtype.kind == "f" and arr.size and arr.max() > 1.0 + 1e-6:
        raise InputImageError(
            f"{name}: float tensor values must be in [0, 1] (got max {float(arr.max()):.3g}); give uint8 for 0-255 data"
        )
    return _from_array(arr, name, max_pixels)


def find_images(folder: str | os.PathLike, *, exclude: str | os.PathLike | None = None) -> list[Path]:
    """All images under ``folder`` (recursive), by extension, sorted, hidden entries skipped.

    Args:
        folder: the folder to walk (symbolic links to folders are not followed).
        exclude: a folder to leave out (e.g. the output dataset when it lies inside ``folder``).

    Raises:
        InputImageError: ``folder`` is missing or not a folder.
    """
    root = Path(folder)
    if not root.exists():
        raise InputImageError(f"{root}: folder not found")
    if not root.is_dir():
        raise InputImageError(f"{root}: not a folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (skip is None or (here / d).resolve() != skip)
        )
        for fname in filenames:
            if not fname.startswith(".") and Path(fname).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(here / fname)
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return found
