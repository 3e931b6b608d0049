"""``gdino segment``: detect with a prompt, then mask every box (Grounded-SAM); JSON out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gdino.cli.options import (
    add_detect_options,
    add_model_options,
    add_prompt_options,
    check_prompt,
    detect_options,
    draw_all,
    load_detector,
    parse_classes,
    read_images,
    result_document,
    run_images,
    weights_name,
    write_document,
)
from gdino.segment.names import SEGMENTERS, canonical_name

if TYPE_CHECKING:
    import torch

SEGMENTER_HELP = "segmenter: " + ", ".join(SEGMENTERS)


def add_segmenter_options(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--segmenter``, ``--segmenter-weights`` and ``--segmenter-dtype`` (shared with ``label``)."""
    p.add_argument(
        "--segmenter",
        default=default,
        metavar="NAME",
        help=SEGMENTER_HELP + (f" (default {default})" if default else ""),
    )
    p.add_argument(
        "--segmenter-weights",
        metavar="PATH",
        help="segmenter checkpoint (.pth/.pt/.safetensors); default: the released weights from the Hugging Face cache",
    )
    p.add_argument(
        "--segmenter-dtype", default="fp32", help="the segmenter's own precision: fp32 (default), fp16 or bf16"
    )


def build_segmenter_from(args: argparse.Namespace, device: str | torch.device, multimask: bool = False) -> object:
    from gdino.segment.build import build_segmenter  # lazy: keeps gdino --help fast

    return build_segmenter(args.segmenter, args.segmenter_weights, device, args.segmenter_dtype, multimask=multimask)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` sub-command."""
    p = subparsers.add_parser(
        "segment",
        help="detect what a prompt names, then mask every box with SAM / SAM 2 (Grounded-SAM)",
        description="Detect objects named by a prompt (-p) or a class list (--classes), then segment "
        "each box with a SAM or SAM 2 model. Prints JSON with COCO RLE masks (or writes it to the FILE "
        "--out names); --draw saves images with translucent masks, outlines and labels into a DIR.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_prompt_options(p)
    add_model_options(p)
    add_detect_options(p)
    add_segmenter_options(p, "sam-vit-b")
    p.add_argument(
        "--multimask", action="store_true", help="predict 3 masks per box and keep the best by SAM's predicted IoU"
    )
    p.add_argument("--out", metavar="FILE", help="write the JSON document to this file instead of stdout")
    p.add_argument("--draw", metavar="DIR", help="save each image with its masks and boxes drawn into DIR")
    p.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from gdino.core.runtime import resolve_dtype  # lazy: keeps gdino --help fast

    options = detect_options(args)
    check_prompt(args)
    canonical_name(args.segmenter)  # unknown name: fail before loading anything
    resolve_dtype(args.segmenter_dtype)
    classes = parse_classes(args.classes) if args.classes is not None else None
    loaded, errors = read_images(args.images, "segment")

    detector = load_detector(args, options)
    segmenter = build_segmenter_from(args, detector.device, args.multimask)
    prompt = detector.prompt(classes if classes is not None else args.prompt)
    results = run_images(detector, loaded, prompt, options, "segmenting", segmenter)
    extra = {"segmenter": getattr(segmenter, "name", args.segmenter), "segmenter_weights": args.segmenter_weights}
    write_document(result_document(weights_name(args), prompt, args, options, results, errors, extra), args.out)
    if args.draw:
        draw_all(loaded, results, Path(args.draw))
    return 0
