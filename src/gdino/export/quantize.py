"""int8 graphs: ONNX Runtime dynamic quantization of an fp32 export (``gdino export --dtype int8``).

Every ``MatMul`` whose second input is a constant weight (the ``nn.Linear`` layers: Swin, BERT, the
fusion and enhancer layers, the deformable attention projections, the decoder and the heads) gets
int8 weights, symmetric and per output channel; its activations are quantized to uint8 per tensor
at run time (``DynamicQuantizeLinear`` + ``MatMulInteger``, plain ONNX ops that ONNX Runtime fuses
into ``DynamicQuantizeMatMul``). Products of two activations (attention scores, the contrastive
logits), convolutions and everything else stay float32. The result is checked with
``onnx.checker`` and keeps the fp32 file's metadata with ``gdino_dtype`` = ``int8`` and
``gdino_quantization`` saying how it was quantized.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gdino.errors import GdinoError
from gdino.export.onnx_file import save_checked

logger = logging.getLogger(__name__)

#: what ``gdino_quantization`` says in the metadata of an int8 graph
QUANTIZATION = (
    "onnxruntime quantize_dynamic: MatMul with constant weights -> MatMulInteger, weights int8 symmetric per "
    "output channel, activations uint8 per tensor at run time; other ops float32"
)


class QuantizeError(GdinoError):
    """The fp32 graph could not be quantized (missing onnxruntime, or a quantizer failure)."""


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = True) -> Path:
    """Quantize the fp32 graph ``src`` into ``dst`` (written atomically) and return ``dst``."""
    try:
        import onnx  # optional dependency ([export] extra)
        from onnxruntime.quantization import QuantType, quantize_dynamic  # optional dependency ([export] extra)
    except ImportError:
        raise QuantizeError("int8 export needs onnxruntime: pip install 'gdino[export]'") from None
    out = Path(dst)
    tmp = out.with_name(out.name + ".int8.tmp")
    try:
        quantize_dynamic(
            str(src),
            str(tmp),
            op_types_to_quantize=["MatMul"],
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as err:  # the quantizer raises many types; one line for the user, details in the log
        logger.debug("quantization failed", exc_info=True)
        tmp.unlink(missing_ok=True)
        raise QuantizeError(f"onnxruntime quantize_dynamic failed: {str(err).splitlines()[0]}") from err
    proto = onnx.load_model(str(tmp))
    meta = {e.key: e.value for e in proto.metadata_props if e.key.startswith("gdino_")}
    meta.update(gdino_dtype="int8", gdino_quantization=QUANTIZATION + ("" if per_channel else " (per tensor)"))
    save_checked(proto, meta, out, tmp, QuantizeError, "the int8 graph")
    logger.info("wrote %s (%.1f MB, int8)", out, out.stat().st_size / 2**20)
    return out
