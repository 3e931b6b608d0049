"""``gdino detect`` and ``gdino label``: argument parsing and output; the work is in the package."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from gdino.errors import GdinoError, InputImageError, PromptError

logger = logging.getLogger("gdino.infer")

#: Used when --weights is not given: $GDINO_WEIGHTS, else this hub name.
DEFAULT_WEIGHTS = "grounding-dino-tiny"


def register(subparsers) -> None:
    """Add the ``detect`` and ``label`` sub-commands."""
    p = subparsers.add_parser(
        "detect",
        help="detect what a prompt names in images; JSON out, optional drawings",
        description="Detect objects named by a prompt (-p) or a class list (--classes) in images. "
        "Prints JSON (or writes it with --out); --draw saves annotated copies.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _add_prompt_options(p)
    _add_model_options(p)
    p.add_argument("--text-threshold", type=float, default=0.25, help="phrase mode: token threshold for labels (default 0.25)")
    p.add_argument("--out", metavar="FILE", help="write the JSON here instead of stdout")
    p.add_argument("--draw", metavar="DIR", help="save each image with its boxes drawn into DIR")
    p.set_defaults(func=run_detect)

    q = subparsers.add_parser(
        "label",
        help="auto-label a folder of images into a COCO (or YOLO) dataset, resumably",
        description="Label every image under FOLDER (recursively) into a dataset folder. "
        "Interrupted jobs resume where they stopped when run again with the same options.",
    )
    q.add_argument("folder", metavar="FOLDER", help="folder of images (searched recursively)")
    _add_prompt_options(q, label=True)
    q.add_argument("--out", metavar="DATASET", required=True, help="dataset folder to write (created if needed)")
    q.add_argument(
        "--format", dest="formats", action="append", choices=("coco", "yolo"),
        help="output format; COCO annotations.json is always written, add --format yolo for YOLO txt files",
    )
    _add_model_options(q)
    q.add_argument("--overwrite", action="store_true", help="discard an earlier job in DATASET instead of resuming it")
    q.add_argument("--workers", type=int, default=2, help="image-loading threads (default 2)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.add_argument("--masks", action="store_true", help="also segment every box (Grounded-SAM); needs --segmenter")
    q.add_argument("--segmenter", metavar="NAME", help="segmenter for --masks (see gdino.segment)")
    q.add_argument("--segmenter-weights", metavar="PATH", help="weights of the segmenter")
    q.set_defaults(func=run_label)


def _add_prompt_options(p: argparse.ArgumentParser, label: bool = False) -> None:
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


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default=None,
        help=f"checkpoint: a hub name, an official .pth, a Hugging Face folder or a gdino .safetensors "
        f"(default: $GDINO_WEIGHTS, else {DEFAULT_WEIGHTS})",
    )
    p.add_argument("--box-threshold", type=float, default=0.35, help="keep boxes scoring above this (default 0.35)")
    p.add_argument("--nms", type=float, default=None, metavar="IOU", help="class-aware NMS at this IoU (default: off)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), fp16 or bf16")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument(
        "--image-size", type=int, default=None, metavar="N",
        help="shorter side of the resized image (default: official 800, longer side <= 1333)",
    )


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


def _check_common(args) -> None:
    from gdino.infer.detector import check_fraction

    check_fraction("box_threshold", args.box_threshold)
    if getattr(args, "text_threshold", None) is not None:
        check_fraction("text_threshold", args.text_threshold)
    if args.nms is not None:
        check_fraction("nms", args.nms)
    if args.batch_size < 1:
        raise GdinoError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.image_size is not None and args.image_size < 32:
        raise GdinoError(f"--image-size must be at least 32, got {args.image_size}")
    if args.prompt is not None:
        from gdino.text.captions import normalize_caption

        normalize_caption(args.prompt)  # empty / punctuation-only -> one-line PromptError


def _load(args):
    """Validate device and dtype, then load the model (errors before any heavy work)."""
    from gdino.infer.runtime import check_dtype_on_device, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype)
    check_dtype_on_device(dtype, device)
    import gdino

    weights = args.weights or os.environ.get("GDINO_WEIGHTS") or DEFAULT_WEIGHTS
    model = gdino.load_model(weights, device=str(device))
    return model, weights, dtype


def _detector(model, args, dtype):
    from gdino.infer.detector import Detector

    return Detector(model, batch_size=args.batch_size, dtype=dtype, image_size=args.image_size)


# ---------------------------------------------------------------------------------------- detect
def read_images(paths: list[str], command: str) -> tuple[list, list[dict]]:
    """Read every image before the model loads: ``(loaded, errors)``, a warning on stderr per
    skipped file; a one-line error when none can be read."""
    from gdino.infer.images import load_image

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


def run_detect(args) -> int:
    _check_common(args)
    classes = parse_classes(args.classes) if args.classes is not None else None
    loaded, errors = read_images(args.images, "detect")

    model, weights, dtype = _load(args)
    detector = _detector(model, args, dtype)
    prompt = classes if classes is not None else args.prompt
    built = detector.prompt(prompt)
    from tqdm import tqdm

    from gdino.infer.detector import DecodeOptions

    opts = DecodeOptions(args.box_threshold, args.text_threshold, nms_iou=args.nms)
    results = [None] * len(loaded)
    with tqdm(total=len(loaded), unit="img", desc="detecting", disable=len(loaded) < 2 or None, file=sys.stderr) as bar:
        for i, dets in detector.run(((i, img, built) for i, img in enumerate(loaded)), opts):
            results[i] = dets
            bar.update(1)

    return write_results(args, weights, built, classes, loaded, results, errors)


def write_results(args, weights, built, classes, loaded, results, errors, extra: dict | None = None) -> int:
    """The JSON document of ``gdino detect``/``gdino segment`` (stdout or ``--out``) and ``--draw``."""
    doc = {
        "weights": str(weights),
        **(extra or {}),
        "mode": built.mode,
        "prompt": args.prompt if classes is None else None,
        "classes": list(built.class_names),
        "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold if classes is None else None,
        "results": [r.to_dict() for r in results],
        "errors": errors,
    }
    doc = {k: v for k, v in doc.items() if v is not None}
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if args.out:
        from gdino.infer.label import atomic_write_text

        atomic_write_text(Path(args.out), text + "\n")
        logger.info("wrote %s", args.out)
    else:
        sys.stdout.write(text + "\n")
    if args.draw:
        _draw_all(loaded, results, Path(args.draw))
    return 0


def _draw_all(loaded, results, folder: Path) -> None:
    from gdino.infer.draw import draw_detections

    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for img, dets in zip(loaded, results):
        src = Path(img.path or img.name)
        suffix = src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
        stem, name, k = src.stem, src.stem + suffix, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}{suffix}"
        used.add(name)
        target = folder / name
        tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{suffix}")  # atomic: write, then rename
        drawn = draw_detections(img.image, dets)
        drawn.save(tmp, **({"quality": 92} if suffix != ".png" else {}))
        os.replace(tmp, target)
    logger.info("drew %d images into %s", len(results), folder)


# ---------------------------------------------------------------------------------------- label
def run_label(args) -> int:
    from gdino.infer.images import find_images
    from gdino.infer.label import label_folder

    _check_common(args)
    if args.workers < 1:
        raise GdinoError(f"--workers must be at least 1, got {args.workers}")
    if args.masks and not args.segmenter:
        raise GdinoError("--masks needs --segmenter NAME (and usually --segmenter-weights PATH)")
    if (args.segmenter or args.segmenter_weights) and not args.masks:
        raise GdinoError("--segmenter and --segmenter-weights only apply with --masks")
    if args.classes is not None:
        classes = parse_classes(args.classes)
    else:
        from gdino.text.captions import normalize_caption, split_phrases

        classes = [p for p, _ in split_phrases(normalize_caption(args.prompt))]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GdinoError(f"--out {out} exists and is not a folder")
    if not find_images(args.folder, exclude=out):  # fail fast, before loading the model
        raise InputImageError(f"{args.folder}: no images found (looked for .jpg, .png, .webp, ... recursively)")

    model, weights, dtype = _load(args)
    segmenter = None
    if args.masks:
        from gdino.segment import build_segmenter

        segmenter = build_segmenter(args.segmenter, args.segmenter_weights, str(model.device))
    detector = _detector(model, args, dtype)
    settings = {"weights": str(weights)}
    if args.masks:
        settings["segmenter"] = args.segmenter
        settings["segmenter_weights"] = args.segmenter_weights
    summary = label_folder(
        detector, args.folder, out, classes,
        box_threshold=args.box_threshold, nms=args.nms, formats=["coco", *(args.formats or [])],
        segmenter=segmenter, overwrite=args.overwrite, progress=not args.no_progress,
        workers=args.workers, settings=settings,
    )
    print(f"gdino label: {summary.line()}; dataset in {out}", file=sys.stderr)
    if summary.failed:
        print(f"gdino label: error: no image under {args.folder} could be read", file=sys.stderr)
        return 1
    return 0
