"""``gdino export WEIGHTS OUT.onnx``: the detector as one dynamic-shape ONNX graph (or two with --split)."""

from __future__ import annotations

import argparse
import re

from gdino.errors import GdinoError


def register(subparsers) -> None:
    """Add the ``export`` sub-command."""
    p = subparsers.add_parser(
        "export",
        help="export the detector to ONNX (dynamic batch, image size and text length)",
        description="Export to ONNX. Inputs: input_ids, attention_mask, token_type_ids, position_ids, "
        "self_attention_masks (as model.tokenize gives them, int64), pixel_values [B,3,H,W] float32, pixel_mask "
        "[B,H,W] int64 (1 = real pixel). Outputs: logits [B,Q,L] (-inf at padding tokens), boxes [B,Q,4] cxcywh "
        "in [0,1]. See docs/export.md.",
    )
    p.add_argument(
        "weights", metavar="WEIGHTS", help="checkpoint: hub name, official .pth, HF folder or gdino .safetensors"
    )
    p.add_argument("out", metavar="OUT.onnx", help="file to write (with --split: OUT.text.onnx and OUT.features.onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument(
        "--dtype", default="fp32", choices=("fp32", "fp16"), help="weights/activations precision (default fp32)"
    )
    p.add_argument("--batch", default="dynamic", help="a fixed batch size or 'dynamic' (default)")
    p.add_argument(
        "--image-size", default="dynamic", metavar="HxW", help="a fixed HxW of pixel_values or 'dynamic' (default)"
    )
    p.add_argument("--split", action="store_true", help="write the text encoder and the rest as two graphs")
    p.set_defaults(func=run_export)


def parse_batch(value: str) -> int | None:
    """``dynamic`` -> None, ``N`` -> N; anything else is a one-line error."""
    if value == "dynamic":
        return None
    if not value.isdigit():
        raise GdinoError(f"--batch must be a positive integer or 'dynamic', got {value!r}")
    return int(value)


def parse_image_size(value: str) -> tuple[int, int] | None:
    """``dynamic`` -> None, ``HxW`` -> (H, W); anything else is a one-line error."""
    if value == "dynamic":
        return None
    m = re.fullmatch(r"(\d+)[xX](\d+)", value)
    if not m:
        raise GdinoError(f"--image-size must be HxW (e.g. 800x1333) or 'dynamic', got {value!r}")
    return int(m.group(1)), int(m.group(2))


def run_export(args: argparse.Namespace) -> int:
    from gdino.export.onnx_export import ExportOptions, export_onnx
    from gdino.weights.load import load_model

    options = ExportOptions(
        opset=args.opset,
        dtype=args.dtype,
        batch=parse_batch(args.batch),
        image_size=parse_image_size(args.image_size),
        split=args.split,
    )
    try:
        import onnx  # noqa: F401  (optional dependency: fail before loading weights)
    except ImportError:
        raise GdinoError("onnx is not installed: pip install 'gdino[export]'") from None
    model = load_model(args.weights)
    for path in export_onnx(model, args.out, options):
        print(f"wrote {path}")
    return 0
