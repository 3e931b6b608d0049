"""Run exported graphs with ONNX Runtime or OpenVINO behind the model interface the detector uses.

:class:`RuntimeModel` quacks like :class:`GroundingDINO` for :class:`gdino.infer.detector.Detector`
(``tokenize``, ``encode_text``, ``encode_image``, ``forward_features``, ``config``, ``tokenizer``),
so detection through a runtime reuses the library's preprocessing, prompt handling, decoding and
``Detections`` unchanged. Its config and tokenizer come from the ONNX file's metadata (no weights
file needed). The runtimes bring their own graph fusion and threading; nothing is hand-written.

- ``onnxruntime``: on ``device="cpu"`` the ``CPUExecutionProvider``; on ``device="cuda"`` the
  TensorRT execution provider (its engine built from the same file and cached beside it, fp16 when
  ``precision="fp16"``) then CUDA, each where the installed onnxruntime has it
  (:func:`onnxruntime_providers`; ``providers`` overrides the choice). Untested on a GPU here.
- ``openvino``: the ``CPU`` device with ``precision`` ``"f32"`` (default: parity-level outputs;
  OpenVINO would otherwise pick bf16 on CPUs with AMX/AVX512-BF16) or ``"bf16"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gdino.config import GroundingDINOConfig
from gdino.core.detections import Detections
from gdino.errors import GdinoError
from gdino.export.graph import TEXT_INPUTS
from gdino.export.onnx_export import split_paths
from gdino.infer.detector import Detector
from gdino.text.padding import pad_tokenized
from gdino.text.tokenize import TokenizedText, tokenize
from gdino.weights.native import tokenizer_from_vocab

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")


class RuntimeGraphError(GdinoError):
    """A graph file or runtime problem (missing package, bad file, wrong graph kind)."""


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file written by :func:`gdino.export.onnx_export.export_onnx`."""
    import onnx  # optional dependency ([export] extra)

    p = Path(path)
    if not p.is_file():
        raise RuntimeGraphError(f"ONNX file not found: {p}")
    try:
        proto = onnx.load_model(str(p), load_external_data=False)
    except Exception as err:  # noqa: BLE001 (protobuf DecodeError and others for a file that is not ONNX)
        raise RuntimeGraphError(
            f"{p} is not a readable ONNX file: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    meta = {e.key: e.value for e in proto.metadata_props}
    if "gdino_config" not in meta:
        raise RuntimeGraphError(f"{p} has no gdino metadata; export it with `gdino export`")
    return meta


ProviderList = list[str | tuple[str, dict[str, Any]]]


def onnxruntime_providers(device: str, available: list[str], graph: Path, fp16: bool = False) -> ProviderList:
    """ONNX Runtime execution providers for ``device``, in order of preference, from ``available``
    (``onnxruntime.get_available_providers()``).

    ``cpu``: the CPU provider. ``cuda``: TensorRT (the engine built from ``graph`` on first use and
    cached in ``GRAPH.trt/`` beside it, so later sessions load it; its fp16 kernels only with
    ``fp16``), then CUDA (which runs what TensorRT does not take), then the CPU; an error when this
    onnxruntime has neither GPU provider (the CPU-only wheel).
    """
    if device not in DEVICES:
        raise RuntimeGraphError(f"unknown runtime device {device!r}; use one of {', '.join(DEVICES)}")
    if fp16 and device != "cuda":
        raise RuntimeGraphError(
            "fp16 through onnxruntime needs --device cuda (TensorRT); on the CPU export --dtype fp16"
        )
    if device == "cpu":
        return ["CPUExecutionProvider"]
    chosen: ProviderList = []
    if "TensorrtExecutionProvider" in available:
        cache = graph.parent / f"{graph.name}.trt"
        trt = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": fp16}
        chosen.append(("TensorrtExecutionProvider", trt))
    if "CUDAExecutionProvider" in available:
        chosen.append("CUDAExecutionProvider")
    if not chosen:
        raise RuntimeGraphError(
            "this onnxruntime has no CUDA or TensorRT execution provider: pip install onnxruntime-gpu"
            " (and TensorRT for its provider)"
        )
    return [*chosen, "CPUExecutionProvider"]


class Session:
    """One compiled graph: ``run(feeds) -> list of float32 arrays`` (outputs in graph order)."""

    def __init__(
        self,
        path: Path,
        runtime: str,
        threads: int | None,
        precision: str,
        providers: ProviderList | None,
        device: str = "cpu",
    ) -> None:
        if runtime not in RUNTIMES:
            raise RuntimeGraphError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        if precision not in PRECISIONS:
            raise RuntimeGraphError(f"unknown runtime precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.runtime = runtime
        if runtime == "onnxruntime":
            try:
                import onnxruntime as ort  # optional dependency ([export] extra)
            except ImportError:
                raise RuntimeGraphError("onnxruntime is not installed: pip install 'gdino[export]'") from None
            if precision == "bf16":
                raise RuntimeGraphError(
                    "onnxruntime runs the graph's own precision; export with --dtype fp16 instead of bf16"
                )
            if providers is None:
                providers = onnxruntime_providers(device, ort.get_available_providers(), path, precision == "fp16")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            self._ort = ort.InferenceSession(str(path), options, providers=providers)
            self.inputs = [i.name for i in self._ort.get_inputs()]
        else:
            if device != "cpu" or precision == "fp16":
                raise RuntimeGraphError("openvino runs here on the CPU in f32 or bf16")
            try:
                import openvino as ov  # optional dependency ([openvino] extra)
            except ImportError:
                raise RuntimeGraphError("openvino is not installed: pip install 'gdino[openvino]'") from None
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            core = ov.Core()
            self._ov = core.compile_model(core.read_model(str(path)), "CPU", config)
            self.inputs = [i.get_any_name() for i in self._ov.inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {k: feeds[k] for k in self.inputs}
        if self.runtime == "onnxruntime":
            return [np.asarray(o, dtype=np.float32) for o in self._ort.run(None, feeds)]
        result = self._ov.create_infer_request().infer(feeds)
        return [np.asarray(result[o], dtype=np.float32) for o in self._ov.outputs]


def _numpy(t: Tensor) -> np.ndarray:
    if t.dtype == torch.bool:
        t = t.long()
    return t.detach().cpu().contiguous().numpy()


def text_feeds(text: TokenizedText) -> dict[str, np.ndarray]:
    """The text inputs of the graphs (int64 arrays) from ``model.tokenize(...)``."""
    return {name: _numpy(getattr(text, name)) for name in TEXT_INPUTS}


@dataclass
class RuntimeText:
    """What :meth:`RuntimeModel.encode_text` returns: the tokenized text, and with a split export
    the text graph's ``text_features``. Supports ``expand`` and ``to`` like ``TextFeatures``."""

    tokenized: TokenizedText
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokenized)

    def expand(self, batch: int) -> RuntimeText:
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand {len(self)} prompts to a batch of {batch}")
        text = TokenizedText(**{k: v.expand(batch, *v.shape[1:]) for k, v in vars(self.tokenized).items()})
        features = None if self.features is None else np.repeat(self.features, batch, axis=0)
        return RuntimeText(text, features)

    def to(self, device: Any) -> RuntimeText:
        return self

    @staticmethod
    def pad_batch(parts: Sequence[RuntimeText]) -> RuntimeText:
        """Texts of one caption each -> one batch for one graph call (the server's mixed prompts):
        the tokenized inputs right-padded with masked tokens as the tokenizer pads a batch, and a
        split export's ``text_features`` with zeros (masked by the same masks)."""
        tokenized = pad_tokenized([p.tokenized for p in parts])
        arrays = [p.features for p in parts if p.features is not None]
        if not arrays:
            return RuntimeText(tokenized)
        if len(arrays) != len(parts):
            raise ValueError("cannot batch texts with and without text_features (from different graphs)")
        length = tokenized.input_ids.shape[1]
        padded = [np.pad(f, ((0, 0), (0, length - f.shape[1]), (0, 0))) for f in arrays]
        return RuntimeText(tokenized, np.concatenate(padded))


@dataclass
class RuntimeImage:
    """What :meth:`RuntimeModel.encode_image` returns: the preprocessed pixels (the graph encodes them)."""

    pixel_values: Tensor
    pixel_mask: Tensor

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    def select(self, index: int | list[int] | Tensor) -> RuntimeImage:
        idx = [index] if isinstance(index, int) else index
        return RuntimeImage(self.pixel_values[idx], self.pixel_mask[idx])

    def expand(self, batch: int) -> RuntimeImage:
        if len(self) == batch:
            return self
        return RuntimeImage(self.pixel_values.expand(batch, -1, -1, -1), self.pixel_mask.expand(batch, -1, -1))


@dataclass
class RuntimeOutput:
    """``logits [B,Q,max_text_len]`` (-inf past the prompt, as the PyTorch model) and ``boxes [B,Q,4]``."""

    logits: Tensor
    boxes: Tensor


class RuntimeModel:
    """An exported detector run by ``runtime``; pass it to ``Detector`` / ``gdino.detect`` as a model.

    Args:
        path: the ``.onnx`` of ``gdino export``, or with ``--split`` the path given to the export
            (its ``.text.onnx`` / ``.features.onnx`` are found next to it).
        runtime: ``onnxruntime`` or ``openvino``.
        threads: intra-op threads (None: the runtime's default).
        precision: OpenVINO's inference precision, ``f32`` or ``bf16``; ``fp16``: TensorRT's fp16
            kernels (onnxruntime on ``cuda``).
        providers: ONNX Runtime execution providers (default: :func:`onnxruntime_providers` for
            ``device``).
        device: ``cpu`` or ``cuda`` (onnxruntime's GPU providers). Inputs are prepared on the host
            either way; the runtime moves them.
    """

    training = False
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(
        self,
        path: str | os.PathLike,
        runtime: str = "onnxruntime",
        *,
        threads: int | None = None,
        precision: str = "f32",
        providers: ProviderList | None = None,
        device: str = "cpu",
    ) -> None:
        single = Path(path)
        text_path, features_path = split_paths(single)
        self.split = not single.is_file() and text_path.is_file() and features_path.is_file()
        first = text_path if self.split else single
        meta = read_metadata(first)
        self.metadata = meta
        self.config = GroundingDINOConfig.from_dict(json.loads(meta["gdino_config"]))
        self.tokenizer = tokenizer_from_vocab(meta["gdino_vocab"], str(first)) if "gdino_vocab" in meta else None
        args = (runtime, threads, precision, providers, device)
        if self.split:
            self.text_session: Session | None = Session(text_path, *args)
            self.session = Session(features_path, *args)
        else:
            if meta.get("gdino_graph") != "detection":
                raise RuntimeGraphError(
                    f"{single} is a {meta.get('gdino_graph')!r} graph; pass the detection graph or the split pair"
                )
            self.text_session = None
            self.session = Session(single, *args)

    # the nn.Module calls the detector makes
    def eval(self) -> RuntimeModel:
        return self

    def train(self, mode: bool = True) -> RuntimeModel:
        return self

    def tokenize(self, captions: list[str] | str) -> TokenizedText:
        if self.tokenizer is None:
            raise RuntimeGraphError("this ONNX file carries no vocabulary; re-export it from a model with a tokenizer")
        return tokenize(
            self.tokenizer, [captions] if isinstance(captions, str) else list(captions), self.config.max_text_len
        )

    def encode_text(self, text: TokenizedText) -> RuntimeText:
        if self.text_session is None:
            return RuntimeText(text)
        return RuntimeText(text, self.text_session.run(text_feeds(text))[0])

    def encode_image(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> RuntimeImage:
        if pixel_mask is None:
            b, _, h, w = pixel_values.shape
            pixel_mask = torch.ones((b, h, w), dtype=torch.bool)
        return RuntimeImage(pixel_values.float(), pixel_mask)

    def forward_features(self, image: RuntimeImage, text: RuntimeText) -> RuntimeOutput:
        text = text.expand(len(image))
        feeds = text_feeds(text.tokenized)
        feeds["pixel_values"] = _numpy(image.pixel_values.float())
        feeds["pixel_mask"] = _numpy(image.pixel_mask)
        if text.features is not None:
            feeds["text_features"] = text.features
        logits, boxes = self.session.run(feeds)
        pad = self.config.max_text_len - logits.shape[-1]
        logits_t = torch.from_numpy(logits)
        if pad > 0:
            logits_t = torch.cat((logits_t, logits_t.new_full((*logits.shape[:-1], pad), float("-inf"))), -1)
        return RuntimeOutput(logits_t, torch.from_numpy(boxes))

    def __call__(self, pixel_values: Tensor, text: TokenizedText, pixel_mask: Tensor | None = None) -> RuntimeOutput:
        return self.forward_features(self.encode_image(pixel_values, pixel_mask), self.encode_text(text))

    def detect(self, images: Any, prompt_or_classes: Any, **options: Any) -> list[Detections]:
        """Detect with the runtime: ``Detector(self, **options).detect(images, prompt_or_classes)``."""
        return Detector(self, **options).detect(images, prompt_or_classes)


def load_runtime(path: str | os.PathLike, runtime: str = "onnxruntime", **kwargs: Any) -> RuntimeModel:
    """``RuntimeModel(path, runtime, ...)``: an exported detector ready for ``detect``."""
    return RuntimeModel(path, runtime, **kwargs)


__all__ = [
    "RUNTIMES",
    "RuntimeModel",
    "Session",
    "load_runtime",
    "onnxruntime_providers",
    "read_metadata",
    "text_feeds",
]
