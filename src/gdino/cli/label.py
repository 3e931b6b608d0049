"""``gdino label``: auto-label a folder into a dataset, resumably; the work is in :mod:`gdino.label`."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from gdino.cli.engine import absolute_if_file, add_engine_options, ray_options, worker_device_flag
from gdino.cli.options import (
    add_detect_options,
    add_model_options,
    add_prompt_options,
    check_folder_out,
    check_prompt,
    detect_options,
    load_detector,
    parse_classes,
    weights_name,
)
from gdino.cli.segment import add_segmenter_options, build_segmenter_from
from gdino.errors import GdinoError, InputImageError
from gdino.segment.names import canonical_name


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``label`` sub-command."""
    q = subparsers.add_parser(
        "label",
        help="auto-label a folder of images into a COCO (or YOLO) dataset, resumably",
        description="Label every image under FOLDER (recursively) into the dataset DIR that --out names. "
        "Interrupted jobs resume where they stopped when run again with the same options.",
    )
    q.add_argument("folder", metavar="FOLDER", help="folder of images (searched recursively)")
    add_prompt_options(q, label=True)
    q.add_argument("--out", metavar="DIR", required=True, help="dataset folder to write (created if needed)")
    q.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=("coco", "yolo"),
        help="output format; COCO annotations.json is always written, add --format yolo for the Ultralytics layout",
    )
    add_model_options(q)
    add_detect_options(q, text_threshold=True)
    q.add_argument("--overwrite", action="store_true", help="discard an earlier job in DIR instead of resuming it")
    q.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image-loading threads (default 2); with --engine ray: detector workers (default 1)",
    )
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.add_argument("--masks", action="store_true", help="also segment every box (Grounded-SAM); needs --segmenter")
    add_segmenter_options(q, None)
    add_engine_options(q, workers=False)
    q.set_defaults(func=run_label)


def run_label(args: argparse.Namespace) -> int:
    from gdino.core.images import find_images  # lazy: keeps gdino --help fast
    from gdino.label.folder import label_folder
    from gdino.text.captions import normalize_caption, split_phrases

    options = detect_options(args)
    check_prompt(args)
    if args.workers is None:
        args.workers = 1 if args.engine == "ray" else 2
    if args.workers < 1:
        raise GdinoError(f"--workers must be at least 1, got {args.workers}")
    ray = ray_options(args)
    if args.masks and not args.segmenter:
        raise GdinoError("--masks needs --segmenter NAME (and usually --segmenter-weights PATH)")
    if (args.segmenter or args.segmenter_weights) and not args.masks:
        raise GdinoError("--segmenter and --segmenter-weights only apply with --masks")
    if args.masks:
        canonical_name(args.segmenter)
    if args.classes is not None:
        classes = parse_classes(args.classes)
    else:
        classes = [p for p, _ in split_phrases(normalize_caption(args.prompt))]
    out = Path(args.out)
    check_folder_out(out)
    settings = {"weights": weights_name(args)}
    if args.masks:
        settings["segmenter"] = args.segmenter
        settings["segmenter_weights"] = args.segmenter_weights
    if ray is not None:
        return _run_ray(args, classes, options, ray, settings)
    if not find_images(args.folder, exclude=out):  # fail fast, before loading the model
        raise InputImageError(f"{args.folder}: no images found (looked for .jpg, .png, .webp, ... recursively)")

    detector = load_detector(args, options)
    segmenter = build_segmenter_from(args, detector.device) if args.masks else None
    summary = label_folder(
        detector,
        args.folder,
        out,
        classes,
        options=options,
        formats=["coco", *(args.formats or [])],
        segmenter=segmenter,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        workers=args.workers,
        settings=settings,
    )
    return _report(summary, args)


def _run_ray(args: argparse.Namespace, classes: list[str], options, ray, settings: dict) -> int:
    from gdino.label.ray_engine import label_with_ray  # lazy: keeps gdino --help fast
    from gdino.segment.build import build_segmenter

    device = worker_device_flag(args)
    factory = None
    if args.masks:  # built in each worker, on the worker's device
        factory = functools.partial(
            build_segmenter,
            args.segmenter,
            args.segmenter_weights and absolute_if_file(args.segmenter_weights),
            device or ("cuda" if ray.gpus_per_worker else "cpu"),
            args.segmenter_dtype,
        )
    summary = label_with_ray(
        args.folder,
        Path(args.out),
        classes,
        weights=absolute_if_file(weights_name(args)),
        ray_options=ray,
        device=device,
        options=options,
        formats=["coco", *(args.formats or [])],
        segmenter_factory=factory,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        settings=settings,
    )
    return _report(summary, args)


def _report(summary, args: argparse.Namespace) -> int:
    print(f"gdino label: {summary.line()}; dataset in {args.out}", file=sys.stderr)
    if summary.failed:
        print(f"gdino label: error: no image under {args.folder} could be read", file=sys.stderr)
        return 1
    return 0
