"""Flags and steps that several commands share: the prompt, the model, the detection options
(:class:`gdino.infer.options.DetectOptions`, one flag per field with the same name), reading
images up front, and the JSON/drawing outputs of ``detect`` and ``segment``.

Output convention of every command: ``--out`` names where the result goes; it is a FILE when
the command makes one document (``detect``, ``segment``: the JSON) and a DIR when it makes many
files (``label``, ``eval``, ``train``, ``track``).

Only argparse-level modules are imported here at the top: torch and the model load inside the
handlers, which keeps ``gdino --help`` fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gdino.errors import GdinoError, InputImageError, PromptError

logger = logging.getLogger("gdino.cli")

#: Used when --weights is not given: $GDINO_WEIGHTS, else this hub name.
DEFAULT_WEIGHTS = "grounding-dino-tiny"

#: ``--runtime`` choices: the PyTorch model, or an exported graph run by one of the runtimes
RUNTIMES = ("torch", "onnxruntime", "openvino")

#: ``--flag`` -> DetectOptions field, for the flags of :func:`add_detect_options`
DETECT_FLAGS = ("box_threshold", "text_threshold", "nms_iou", "max_detections", "batch_size", "image_size", "dtype")


def add_prompt_options(p: argparse.ArgumentParser, label: bool = False) -> None:
    """``-p/--prompt`` or ``--classes`` (one of them required)."""
    g = p.add_mutually_exclusive_group(required=True)
    help_p = (
        "caption, phrases separated by ' . ' (each phrase becomes a category)"
        if label
        else "caption such as 'a cat . a remote control' (labels are the matched phrases)"
    )
    g.add_argument("-p", "--prompt", help=help_p)
    g.add_argument(
        "--classes",
        help="comma-separated class names ('cat,remote control'), or @FILE with one name per line; "
        "any number of classes (long lists run in several passes)",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--weights`` and ``--device``."""
    p.add_argument(
        "--weights",
        default=None,
        help=f"checkpoint: a hub name, an official .pth, a Hugging Face folder or a gdino .safetensors "
        f"(default: $GDINO_WEIGHTS, else {DEFAULT_WEIGHTS})",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=RUNTIMES,
        help="run the PyTorch model (default) or a graph written by `gdino export` (--onnx) with ONNX Runtime or "
        "OpenVINO on the CPU",
    )
    p.add_argument("--onnx", metavar="FILE", help="the exported graph for --runtime onnxruntime/openvino")


def add_detect_options(p: argparse.ArgumentParser, text_threshold: bool = True) -> None:
    """One flag per :class:`DetectOptions` field a user sets from the command line (defaults there)."""
    p.add_argument("--box-threshold", type=float, help="keep boxes scoring above this (default 0.35)")
    if text_threshold:
        p.add_argument("--text-threshold", type=float, help="phrase mode: token threshold for labels (default 0.25)")
    p.add_argument("--nms-iou", type=float, metavar="IOU", help="class-aware NMS at this IoU (default: off)")
    p.add_argument("--max-detections", type=int, metavar="N", help="keep at most N detections per image, best first")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 1)")
    p.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="shorter side of the resized image (default: official 800, longer side <= 1333)",
    )
    p.add_argument("--dtype", help="fp32 (default), fp16 or bf16")


def detect_options(args: argparse.Namespace, **fixed: Any) -> Any:
    """The :class:`DetectOptions` the flags ask for (unset flags keep the defaults)."""
    from gdino.infer.options import DetectOptions  # lazy: keeps gdino --help fast

    given = {name: getattr(args, name) for name in DETECT_FLAGS if getattr(args, name, None) is not None}
    return DetectOptions(**{**given, **fixed})


def check_prompt(args: argparse.Namespace) -> None:
    """Empty or punctuation-only ``--prompt``: a one-line error before any heavy work."""
    if args.prompt is not None:
        from gdino.text.captions import normalize_caption  # lazy: keeps gdino --help fast

        normalize_caption(args.prompt)


def parse_classes(value: str) -> list[str]:
    """``"a,b,c"`` or ``"@file"`` (one per line, blank lines and #-comments ignored) -> names."""
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise PromptError(f"class file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PromptError(f"cannot read class file {path}: {e}") from None
        names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    else:
        names = [n.strip() for n in value.split(",")]
        if any(not n for n in names) and any(names):
            raise PromptError(f"empty class name in --classes {value!r} (check the commas)")
        names = [n for n in names if n]
    if not names:
        raise PromptError("--classes names no class: give names such as 'cat,dog'")
    return names


def weights_name(args: argparse.Namespace) -> str:
    """The model a command runs, as its results name it: ``--onnx FILE`` with ``--runtime
    onnxruntime|openvino``, else ``--weights``, ``$GDINO_WEIGHTS`` or the default."""
    if getattr(args, "runtime", "torch") != "torch" and getattr(args, "onnx", None):
        return str(args.onnx)
    return str(args.weights or os.environ.get("GDINO_WEIGHTS") or DEFAULT_WEIGHTS)


def load_detector(args: argparse.Namespace, options: Any) -> Any:
    """Validate the device for ``options.dtype``, then load the model into a :class:`Detector`."""
    from gdino.core.runtime import check_dtype_on_device, resolve_device  # lazy: keeps gdino --help fast
    from gdino.infer.detector import Detector

    runtime = getattr(args, "runtime", "torch")
    if runtime != "torch":
        return Detector(load_runtime_model(args, runtime, options.dtype), options)
    if getattr(args, "onnx", None):
        raise GdinoError("--onnx needs --runtime onnxruntime or --runtime openvino")
    device = resolve_device(args.device)
    check_dtype_on_device(options.torch_dtype, device)
    return Detector.from_pretrained(weights_name(args), device=device, options=options)


def load_runtime_model(args: argparse.Namespace, runtime: str, dtype: str) -> Any:
    """The ``--onnx`` graph run by ``runtime``: OpenVINO on the CPU (``--dtype bf16``: its bf16
    precision); ONNX Runtime on the CPU, or with ``--device cuda`` on its TensorRT / CUDA providers
    (``--dtype fp16``: TensorRT's fp16 kernels)."""
    if not args.onnx:
        raise GdinoError(f"--runtime {runtime} needs --onnx FILE (write one with `gdino export`)")
    device = "cpu" if args.device == "auto" else args.device
    if device not in ("cpu", "cuda") or (device == "cuda" and runtime != "onnxruntime"):
        raise GdinoError(
            f"--runtime {runtime} runs on " + ("the CPU or cuda" if runtime == "onnxruntime" else "the CPU")
        )
    allowed = {"openvino": ("fp32", "bf16"), "onnxruntime": ("fp32", "fp16") if device == "cuda" else ("fp32",)}
    if dtype not in allowed[runtime]:
        raise GdinoError(f"--runtime {runtime} on {device} takes --dtype {' or '.join(allowed[runtime])}")
    from gdino.export.runtimes import RuntimeModel  # lazy: optional runtimes, and keeps gdino --help fast

    precision = {"fp32": "f32", "bf16": "bf16", "fp16": "fp16"}[dtype]
    return RuntimeModel(args.onnx, runtime, precision=precision, device=device)


def read_images(paths: list[str], command: str) -> tuple[list, list[dict]]:
    """Read every image before the model loads: ``(loaded, errors)``, a warning on stderr per
    skipped file; a one-line error when none can be read."""
    from gdino.core.images import load_image  # lazy: keeps gdino --help fast

    loaded, errors = [], []
    for path in paths:
        try:
            loaded.append(load_image(path))
        except InputImageError as e:
            errors.append({"image": path, "error": str(e)})
    if not loaded:
        if len(errors) == 1:
            raise InputImageError(errors[0]["error"])
        raise InputImageError(f"none of the {len(errors)} images could be read (first: {errors[0]['error']})")
    for err in errors:
        print(f"gdino {command}: warning: skipping {err['error']}", file=sys.stderr)
    return loaded, errors


def run_images(detector: Any, loaded: list, prompt: Any, options: Any, desc: str, segmenter: Any = None) -> list:
    """Detections (and masks, with a segmenter) of every loaded image, with a progress bar."""
    from tqdm import tqdm  # lazy: keeps gdino --help fast

    results: list = [None] * len(loaded)
    with tqdm(total=len(loaded), unit="img", desc=desc, disable=len(loaded) < 2 or None, file=sys.stderr) as bar:
        for i, dets in detector.run(((i, img, prompt) for i, img in enumerate(loaded)), options, segmenter):
            results[i] = dets
            bar.update(1)
    return results


def result_document(
    weights: str,
    prompt: Any,
    args: argparse.Namespace,
    options: Any,
    results: list,
    errors: list,
    extra: dict | None = None,
) -> dict[str, Any]:
    """The JSON document of ``gdino detect`` / ``gdino segment`` (:func:`gdino.infer.report.result_document`)."""
    from gdino.infer.report import result_document as build  # lazy: keeps gdino --help fast

    return build(weights, prompt, args.prompt, options, results, errors, extra)


def write_document(doc: dict[str, Any], out: str | None) -> None:
    """``doc`` as indented JSON to ``out`` (atomically) or to stdout."""
    if out:
        from gdino.core.files import write_json  # lazy: keeps gdino --help fast

        write_json(out, doc)
        logger.info("wrote %s", out)
    else:
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def draw_all(loaded: list, results: list, folder: Path) -> None:
    """Each image with its detections drawn, into ``folder`` (unique names, atomic writes)."""
    from gdino.core.files import atomic_path  # lazy: keeps gdino --help fast
    from gdino.infer.draw import draw_detections

    used: set[str] = set()
    for img, dets in zip(loaded, results):
        src = Path(img.path or img.name)
        suffix = src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
        stem, name, k = src.stem, src.stem + suffix, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}{suffix}"
        used.add(name)
        params: dict[str, Any] = {"quality": 92} if suffix != ".png" else {}
        with atomic_path(folder / name, fsync=False) as tmp:
            draw_detections(img.image, dets).save(tmp, **params)
    logger.info("drew %d images into %s", len(results), folder)


def check_folder_out(out: Path, flag: str = "--out") -> None:
    if out.exists() and not out.is_dir():
        raise GdinoError(f"{flag} {out} exists and is not a folder")
