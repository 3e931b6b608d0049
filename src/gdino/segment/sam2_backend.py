"""``Sam2Segmenter``: boxes -> masks with SAM 2 / 2.1 (the ``sam2`` package, an optional extra).

The model is built from the package's own configs (``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``,
optionally with Hydra overrides for small test models) and the image side runs through
``SAM2ImagePredictor``: one ``set_image`` per image, then all boxes of the image in one batched
prompt-encoder + mask-decoder call. SAM 2 resizes the image to a square, so boxes are mapped
with per-axis scales; masks come back at the original size. A non-float32 ``dtype`` runs SAM 2
under autocast in that dtype (as the SAM 2 authors do), independent of the detector's dtype.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gdino.core.detections import Detections
from gdino.errors import GdinoError
from gdino.segment.predictor import as_rgb_array, image_for, with_no_masks

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base  # untyped package: Any to mypy

#: gdino name -> the package's config file
SAM2_CONFIGS = {
    "sam2.1-hiera-t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1-hiera-s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1-hiera-b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1-hiera-l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def import_sam2():
    """The ``sam2`` package, or a one-line error saying how to install it."""
    try:
        import sam2  # optional ([sam2])
        import sam2.build_sam  # noqa: F401
        import sam2.sam2_image_predictor  # noqa: F401
    except ImportError as e:
        raise GdinoError("SAM 2 segmenters need the sam2 package: pip install 'gdino[sam2]'") from e
    return sam2


def build_sam2_model(config_file: str, overrides: list[str] | tuple[str, ...] = ()) -> torch.nn.Module:
    """A SAM 2 model with random weights on the CPU, in eval mode (``overrides``: Hydra ``++key=value``)."""
    import_sam2()
    from sam2.build_sam import build_sam2  # optional ([sam2])

    return build_sam2(config_file, ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=list(overrides))


class Sam2Segmenter:
    """Masks for boxes with a SAM 2 model (``sam2.modeling.sam2_base.SAM2Base``).

    Args:
        model: the SAM 2 model (see :func:`build_sam2_model`).
        multimask: 3 masks per box, keep the best by predicted IoU.
        dtype: autocast dtype for SAM 2 (float32: none).
        name: shown in messages.
    """

    def __init__(
        self, model: SAM2Base, *, multimask: bool = False, dtype: torch.dtype = torch.float32, name: str = "sam2"
    ) -> None:
        import_sam2()
        from sam2.sam2_image_predictor import SAM2ImagePredictor  # optional ([sam2])

        self.model = model.eval()
        self.predictor = SAM2ImagePredictor(self.model)
        s = int(self.model.image_size)  # the package assumes 1024; follow the model for small test models
        self.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self.multimask = bool(multimask)
        self.dtype = dtype
        self.name = name
        self.stats = {"image_encodes": 0, "decoder_calls": 0}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _precision(self):
        if self.dtype == torch.float32:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def embed(self, image: Any) -> tuple[int, int]:
        """Run the image encoder on an ``HxWx3`` uint8 RGB image; returns its ``(H, W)``."""
        arr = as_rgb_array(image)
        with self._precision():
            self.predictor.set_image(arr)
        self.stats["image_encodes"] += 1
        return arr.shape[0], arr.shape[1]

    @torch.inference_mode()
    def predict(
        self, xyxy: Tensor, original_size: tuple[int, int], multimask: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """Masks ``[N, H, W]`` bool and predicted IoU ``[N]`` for boxes of the last embedded image."""
        multimask = self.multimask if multimask is None else bool(multimask)
        h, w = original_size
        if xyxy.shape[0] == 0:
            return torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0)
        p = self.predictor
        with self._precision():
            _, _, _, boxes = p._prep_prompts(
                None, None, xyxy.reshape(-1, 4).float().cpu().numpy(), None, normalize_coords=True
            )
            masks, iou, _ = p._predict(None, None, boxes, None, multimask_output=multimask)
        self.stats["decoder_calls"] += 1
        iou = iou.float()
        best = iou.argmax(dim=1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        return masks[rows, best].bool().cpu(), iou[rows, best].cpu()

    def segment(self, image: Any, detections: Detections) -> Detections:
        """``detections`` with ``masks`` and ``mask_scores`` (SAM 2's predicted IoU) added."""
        arr = image_for(image, detections)
        if len(detections) == 0:
            return with_no_masks(detections)
        self.embed(arr)
        masks, scores = self.predict(detections.xyxy, arr.shape[:2])
        return replace(detections, masks=masks, mask_scores=scores)

    def __repr__(self) -> str:
        return f"Sam2Segmenter({self.name}, {self.device}, {self.dtype}, multimask={self.multimask})"
