"""``gdino detect``: argument parsing and output; the work is in :class:`gdino.Detector`."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``detect`` sub-command."""
    p = subparsers.add_parser(
        "detect",
        help="detect what a prompt names in images; JSON out, optional drawings",
        description="Detect objects named by a prompt (-p) or a class list (--classes) in images. "
        "Prints JSON (or writes it to the FILE --out names); --draw saves annotated copies into a DIR.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_prompt_options(p)
    add_model_options(p)
    add_detect_options(p)
    p.add_argument("--out", metavar="FILE", help="write the JSON document to this file instead of stdout")
    p.add_argument("--draw", metavar="DIR", help="save each image with its boxes drawn into DIR")
    p.set_defaults(func=run_detect)


def run_detect(args: argparse.Namespace) -> int:
    options = detect_options(args)
    check_prompt(args)
    classes = parse_classes(args.classes) if args.classes is not None else None
    loaded, errors = read_images(args.images, "detect")

    detector = load_detector(args, options)
    prompt = detector.prompt(classes if classes is not None else args.prompt)
    results = run_images(detector, loaded, prompt, options, "detecting")
    write_document(result_document(weights_name(args), prompt, args, options, results, errors), args.out)
    if args.draw:
        draw_all(loaded, results, Path(args.draw))
    return 0
