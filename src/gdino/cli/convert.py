"""``gdino convert SRC DST``: weights from one format to another (official .pth, HF folder, gdino .safetensors)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("gdino.weights")


def register(subparsers) -> None:
    """Add the ``convert`` sub-command."""
    p = subparsers.add_parser(
        "convert",
        help="convert weights between official .pth, Hugging Face folder, gdino .safetensors and mmdetection .pth",
        description="Convert Grounding DINO weights (also MM-Grounding-DINO and LLMDet). SRC: official or "
        "mmdetection .pth, HF-layout folder, gdino .safetensors or a released name (grounding-dino-tiny, "
        "mm-grounding-dino-tiny, llmdet-tiny, ...: docs/weights.md lists them). The output "
        "format follows DST: .pth -> official, .safetensors -> gdino, a folder -> hf; --format overrides "
        "(--format mmdet for mmdetection's .pth).",
    )
    p.add_argument("src", metavar="SRC", help="weights to read")
    p.add_argument("dst", metavar="DST", help="file or folder to write")
    p.add_argument("--format", dest="fmt", choices=("official", "hf", "gdino", "mmdet"), help="output format")
    p.add_argument("--config", metavar="PRESET", help="architecture preset when SRC does not say (e.g. swin-t)")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from gdino.weights.load import convert  # lazy: keeps gdino --help fast

    fmt = convert(args.src, args.dst, args.fmt, args.config)
    print(f"wrote {args.dst} ({fmt})")
    return 0
