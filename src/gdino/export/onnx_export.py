"""``export_onnx``: a GroundingDINO -> ONNX file(s) with dynamic shapes, checked, with metadata.

The graphs are traced with ``torch.onnx.export(dynamo=True)`` (``torch.export``): sizes are
symbolic, so a branch or loop that depends on an input size either stays symbolic or fails the
export loudly (the model's export branches keep every size symbolic); nothing is baked in silently.
Batch, image height and width and the text length are dynamic unless fixed by the options.
Every file is checked with ``onnx.checker`` and carries in its metadata the model config (JSON),
the tokenizer vocabulary and its SHA-256, the graph kind and the precision. Files are written
atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gdino import __version__
from gdino.config import GroundingDINOConfig
from gdino.errors import GdinoError
from gdino.export.graph import DetectionGraph, FeaturesGraph, TextGraph, example_inputs
from gdino.export.onnx_file import save_checked
from gdino.export.quantize import quantize_int8
from gdino.model.grounding_dino import GroundingDINO
from gdino.weights.native import vocab_text

logger = logging.getLogger(__name__)

#: precision -> dtype of the traced model; ``int8`` is an fp32 export quantized afterwards (quantize.py)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float32}
MIN_OPSET = 17
#: smallest and largest image side accepted by a dynamic-size graph (the export's shape guards)
MIN_SIDE, MAX_SIDE = 64, 8192
MAX_BATCH = 1024


class ExportError(GdinoError):
    """The model could not be exported or the written graph failed its check."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        opset: ONNX opset (>= 17).
        dtype: ``fp32`` or ``fp16`` weights and activations (inputs and outputs stay float32), or
            ``int8``: the fp32 graph with its linear layers quantized by ONNX Runtime (int8 weights,
            uint8 activations at run time; :mod:`gdino.export.quantize`).
        batch: a fixed batch size, or None for a dynamic one.
        image_size: a fixed ``(height, width)`` of ``pixel_values``, or None for dynamic sizes.
        split: write ``<stem>.text.onnx`` (text encoder) and ``<stem>.features.onnx`` (the rest)
            instead of one graph.
    """

    opset: int = 18
    dtype: str = "fp32"
    batch: int | None = None
    image_size: tuple[int, int] | None = None
    split: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ExportError(f"opset must be an integer >= {MIN_OPSET}, got {self.opset!r}")
        if self.dtype not in DTYPES:
            raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.batch is not None and (not isinstance(self.batch, int) or not 1 <= self.batch <= MAX_BATCH):
            raise ExportError(f"batch must be an integer in [1, {MAX_BATCH}] or dynamic, got {self.batch!r}")
        if self.image_size is not None:
            h, w = self.image_size
            if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
                raise ExportError(f"image size must be within [{MIN_SIDE}, {MAX_SIDE}] per side, got {h}x{w}")


def vocab_sha256(tokenizer: Any) -> str | None:
    """SHA-256 of the WordPiece vocabulary text (one token per line, in id order), or None."""
    text = vocab_text(tokenizer) if tokenizer is not None else None
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def min_side(config: GroundingDINOConfig) -> int:
    """Smallest side (a multiple of 32, >= MIN_SIDE) of a square image with at least ``num_queries``
    encoder tokens: a dynamic graph takes sides from here up, so that query selection always keeps
    ``num_queries`` queries (fewer would be a different graph). 224 for the released models."""
    levels = config.num_feature_levels
    side = MIN_SIDE
    while sum((-(-side // (8 * 2**lvl))) ** 2 for lvl in range(levels)) < config.num_queries:
        side += 32
    return side


def _dynamic_shapes(
    names: tuple[str, ...], options: ExportOptions, config: GroundingDINOConfig
) -> dict[str, dict[int, Any]]:
    """Per input, the symbolic dims (one Dim object per meaning, shared across inputs)."""
    max_text_len, low = config.max_text_len, min_side(config)
    dim = torch.export.Dim
    batch = None if options.batch is not None else dim("batch", min=1, max=MAX_BATCH)
    length = dim("text_len", min=2, max=max_text_len)
    height = width = None
    if options.image_size is None:
        height, width = dim("height", min=low, max=MAX_SIDE), dim("width", min=low, max=MAX_SIDE)
    axes: dict[str, dict[int, Any]] = {
        "input_ids": {0: batch, 1: length},
        "attention_mask": {0: batch, 1: length},
        "token_type_ids": {0: batch, 1: length},
        "position_ids": {0: batch, 1: length},
        "self_attention_masks": {0: batch, 1: length, 2: length},
        "text_features": {0: batch, 1: length},
        "pixel_values": {0: batch, 2: height, 3: width},
        "pixel_mask": {0: batch, 1: height, 2: width},
    }
    return {name: {k: v for k, v in axes[name].items() if v is not None} for name in names}


def _example(model: GroundingDINO, options: ExportOptions) -> dict[str, torch.Tensor]:
    # sizes differ from each other so that no two dynamic dims are taken for one (duck sizing), and
    # every Swin stage has several windows, so tracing takes the general branch of every size test
    h, w = options.image_size or (480, 608)
    return example_inputs(model, batch=options.batch or 2, height=h, width=w, length=11)


def export_graph(
    graph: DetectionGraph | TextGraph | FeaturesGraph, path: Path, options: ExportOptions, metadata: dict[str, str]
) -> Path:
    """Trace ``graph`` (a wrapper of :mod:`gdino.export.graph`) to ``path``; check it; add ``metadata``."""

    model = graph.model
    names = graph.inputs
    example = _example(model, options)
    args = tuple(example[name] for name in names)
    shapes = _dynamic_shapes(names, options, model.config)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad():
            # guards that sympy cannot prove for every size (e.g. "a padded size >= the size") become
            # runtime assertions instead of failing the export or fixing the size; strict=False is
            # torch.export's non-strict tracing mode (no TorchDynamo), not checkpoint loading
            exported = torch.export.export(
                graph, args, dynamic_shapes=shapes, strict=False, prefer_deferred_runtime_asserts_over_guards=True
            )
            program = torch.onnx.export(
                exported,
                dynamo=True,
                input_names=list(names),
                output_names=list(graph.outputs),
                opset_version=options.opset,
                external_data=False,
            )
    except Exception as err:  # the exporter raises many types; one line for the user, details in the log
        logger.debug("export failed", exc_info=True)
        raise ExportError(f"torch.onnx.export failed: {str(err).splitlines()[0]}") from err
    if program is None:  # only without dynamo=True
        raise ExportError("torch.onnx.export returned no program")
    save_checked(program.model_proto, metadata, path, tmp, ExportError, "the exported graph")
    logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 2**20)
    return path


def split_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``OUT.onnx`` -> (``OUT.text.onnx``, ``OUT.features.onnx``)."""
    p = Path(path)
    stem = p.name.removesuffix(".onnx")
    return p.with_name(stem + ".text.onnx"), p.with_name(stem + ".features.onnx")


def export_onnx(model: GroundingDINO, path: str | os.PathLike, options: ExportOptions = ExportOptions()) -> list[Path]:
    """Export ``model`` (unchanged: a copy is cast for fp16) and return the written file(s)."""
    out = Path(path)
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give the .onnx file to write")
    model = model.eval()
    if DTYPES[options.dtype] != torch.float32:
        model = copy.deepcopy(model).to(DTYPES[options.dtype])
    vocab = vocab_text(model.tokenizer) if model.tokenizer is not None else None
    metadata = {
        "gdino_version": __version__,
        "gdino_config": json.dumps(model.config.to_dict()),
        "gdino_dtype": options.dtype,
    }
    if vocab is not None:
        metadata["gdino_vocab"] = vocab
        metadata["gdino_vocab_sha256"] = hashlib.sha256(vocab.encode("utf-8")).hexdigest()
    if not options.split:
        return [_write(DetectionGraph(model), out, options, {**metadata, "gdino_graph": "detection"})]
    text_path, features_path = split_paths(out)
    return [
        _write(TextGraph(model), text_path, options, {**metadata, "gdino_graph": "text"}),
        _write(FeaturesGraph(model), features_path, options, {**metadata, "gdino_graph": "features"}),
    ]


def _write(
    graph: DetectionGraph | TextGraph | FeaturesGraph, path: Path, options: ExportOptions, metadata: dict[str, str]
) -> Path:
    """``export_graph``; for ``int8`` an fp32 graph next to ``path``, quantized into ``path``."""
    if options.dtype != "int8":
        return export_graph(graph, path, options, metadata)
    fp32 = path.with_name(path.name + ".fp32.tmp")
    try:
        export_graph(graph, fp32, options, {**metadata, "gdino_dtype": "fp32"})
        return quantize_int8(fp32, path)
    finally:
        fp32.unlink(missing_ok=True)
