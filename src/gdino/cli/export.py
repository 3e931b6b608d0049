"""``gdino export WEIGHTS OUT.onnx``: the detector as one dynamic-shape ONNX graph (or two with --split)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gdino.errors import GdinoError

if TYPE_CHECKING:  # the export module imports torch: only for the type hint here
    from gdino.export.onnx_export import ExportOptions


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
        "weights",
        metavar="WEIGHTS",
        help="checkpoint: hub name, official .pth, HF folder or gdino .safetensors; with --dtype int8 also an fp32 "
        ".onnx written by gdino export (quantized without exporting again)",
    )
    p.add_argument("out", metavar="OUT.onnx", help="file to write (with --split: OUT.text.onnx and OUT.features.onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "fp16", "int8"),
        help="weights/activations precision (default fp32); int8: the fp32 graph with its linear layers quantized "
        "by ONNX Runtime (int8 weights, uint8 activations at run time; run it with --runtime onnxruntime)",
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
    if args.dtype == "int8":
        try:
            import onnxruntime.quantization  # noqa: F401  (optional dependency: fail before a long export)
        except ImportError:
            raise GdinoError("--dtype int8 needs onnxruntime: pip install 'gdino[export]'") from None
    if args.weights.endswith(".onnx"):
        print(f"wrote {quantize_onnx_file(args, options)}")
        return 0
    model = load_model(args.weights)
    for path in export_onnx(model, args.out, options):
        print(f"wrote {path}")
    return 0


def quantize_onnx_file(args: argparse.Namespace, options: ExportOptions) -> Path:
    """``gdino export FP32.onnx OUT.onnx --dtype int8``: quantize an existing single fp32 graph."""
    from gdino.export.quantize import quantize_int8
    from gdino.export.runtimes import read_metadata

    if options.dtype != "int8":
        raise GdinoError("an .onnx WEIGHTS is only taken with --dtype int8 (to quantize it); give a checkpoint")
    if options.split or options.batch is not None or options.image_size is not None:
        raise GdinoError("quantizing an .onnx keeps its shapes: drop --split, --batch and --image-size")
    meta = read_metadata(args.weights)
    if meta.get("gdino_dtype", "fp32") != "fp32" or meta.get("gdino_graph") != "detection":
        raise GdinoError(f"{args.weights} is not an fp32 detection graph (gdino_dtype {meta.get('gdino_dtype')!r})")
    if Path(args.out).resolve() == Path(args.weights).resolve():
        raise GdinoError("OUT.onnx must differ from the fp32 .onnx being quantized")
    return quantize_int8(args.weights, args.out)
