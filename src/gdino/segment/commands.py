"""``gdino segment``: detect with a prompt, then mask every box (Grounded-SAM); JSON out."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("gdino.segment")


def register(subparsers) -> None:
    """Add the ``segment`` sub-command."""
    from gdino.infer.commands import _add_model_options, _add_prompt_options

    p = subparsers.add_parser(
        "segment",
        help="detect what a prompt names, then mask every box with SAM / SAM 2 (Grounded-SAM)",
        description="Detect objects named by a prompt (-p) or a class list (--classes), then segment "
        "each box with a SAM or SAM 2 model. Prints JSON with COCO RLE masks (or writes it with --out); "
        "--draw saves images with translucent masks, outlines and labels.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _add_prompt_options(p)
    _add_model_options(p)
    p.add_argument("--text-threshold", type=float, default=0.25, help="phrase mode: token threshold for labels (default 0.25)")
    p.add_argument(
        "--segmenter", default="sam-vit-b", metavar="NAME",
        help="sam-vit-b (default), sam-vit-l, sam-vit-h, sam2.1-hiera-t, -s, -b+, -l",
    )
    p.add_argument(
        "--segmenter-weights", metavar="PATH",
        help="segmenter checkpoint (.pth/.pt/.safetensors); default: the released weights from the Hugging Face cache",
    )
    p.add_argument("--segmenter-dtype", default="fp32", help="the segmenter's own precision: fp32 (default), fp16 or bf16")
    p.add_argument("--multimask", action="store_true", help="predict 3 masks per box and keep the best by SAM's predicted IoU")
    p.add_argument("--out", metavar="FILE", help="write the JSON here instead of stdout")
    p.add_argument("--draw", metavar="DIR", help="save each image with its masks and boxes drawn into DIR")
    p.set_defaults(func=run_segment_command)


def run_segment_command(args) -> int:
    from gdino.infer.commands import _check_common, _detector, _load, parse_classes, read_images, write_results
    from gdino.infer.detector import DecodeOptions
    from gdino.infer.runtime import resolve_dtype
    from gdino.segment.build import build_segmenter, canonical_name
    from gdino.segment.pipeline import run_segment

    _check_common(args)
    canonical_name(args.segmenter)  # unknown name: fail before loading anything
    resolve_dtype(args.segmenter_dtype)
    classes = parse_classes(args.classes) if args.classes is not None else None
    loaded, errors = read_images(args.images, "segment")

    model, weights, dtype = _load(args)
    segmenter = build_segmenter(
        args.segmenter, args.segmenter_weights, model.device, args.segmenter_dtype, multimask=args.multimask
    )
    detector = _detector(model, args, dtype)
    built = detector.prompt(classes if classes is not None else args.prompt)
    opts = DecodeOptions(args.box_threshold, args.text_threshold, nms_iou=args.nms)
    from tqdm import tqdm

    results = [None] * len(loaded)
    with tqdm(total=len(loaded), unit="img", desc="segmenting", disable=len(loaded) < 2 or None, file=sys.stderr) as bar:
        for i, dets in run_segment(detector, segmenter, ((i, img, built) for i, img in enumerate(loaded)), opts):
            results[i] = dets
            bar.update(1)

    extra = {"segmenter": getattr(segmenter, "name", args.segmenter), "segmenter_weights": args.segmenter_weights}
    return write_results(args, weights, built, classes, loaded, results, errors, extra)

