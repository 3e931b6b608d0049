"""The training objective: Hungarian-matched focal/L1/GIoU losses on the last decoder layer, every
intermediate layer and the encoder proposals, plus the contrastive denoising losses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch import distributed as dist

from gdino.data.targets import Target
from gdino.errors import GdinoError
from gdino.model.features import GroundingDINOOutput
from gdino.train.denoising import DenoisingMeta
from gdino.train.losses import box_losses, gather_matched_boxes, matched_token_targets, token_focal_loss
from gdino.train.matcher import hungarian_match


@dataclass(frozen=True)
class LossWeights:
    """Loss coefficients and matching costs of one training recipe.

    ``aux``, ``enc`` and ``dn`` multiply the class/bbox/giou weights of the intermediate decoder
    layers, the encoder (query-selection) proposals and the denoising queries.
    """

    loss_class: float = 2.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    aux: float = 1.0
    enc: float = 1.0
    dn: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


LOSS_PRESETS: dict[str, LossWeights] = {
    # Open-GroundingDino cfg_odvg.py / HF transformers: cls 2.0, matcher class cost 1.0
    "open-groundingdino": LossWeights(),
    # mmdetection mm_grounding_dino: FocalLoss 1.0, BinaryFocalLossCost 2.0
    "mm-grounding-dino": LossWeights(loss_class=1.0, cost_class=2.0),
}


def get_loss_weights(name: str) -> LossWeights:
    """A named preset of :data:`LOSS_PRESETS`."""
    if name not in LOSS_PRESETS:
        raise GdinoError(f"unknown loss preset {name!r}; choose one of {', '.join(sorted(LOSS_PRESETS))}")
    return LOSS_PRESETS[name]


def global_num_boxes(targets: Sequence[Target], device: torch.device | str = "cpu") -> float:
    """Boxes summed over all processes, divided by the world size (DDP averages gradients), >= 1."""
    n = torch.tensor(float(sum(len(t) for t in targets)), device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        world = dist.get_world_size()
    return max(n.item() / world, 1.0)


def _base(name: str) -> str:
    return name.split("_")[1]  # "loss_class_enc" -> "class"


@dataclass
class SetCriterion:
    """``criterion(output, targets, dn_meta=None, num_boxes=None) -> {name: scalar}``.

    Names: ``loss_{class,bbox,giou}`` for the last decoder layer, with suffix ``_{i}`` for
    intermediate layer ``i``, ``_enc`` for the encoder proposals, ``_dn`` / ``_dn_{i}`` for the
    denoising queries; values are unweighted (float32). ``total`` is the weighted sum.
    Each layer and the encoder output are matched separately. Every loss is divided by
    ``num_boxes`` (the denoising ones by ``num_boxes * groups``); when None it is computed with
    :func:`global_num_boxes`.
    """

    weights: LossWeights = field(default_factory=LossWeights)

    def match(self, logits: Tensor, boxes: Tensor, targets: Sequence[Target], text_mask: Tensor):
        w = self.weights
        return hungarian_match(
            logits, boxes, targets, text_mask, w.cost_class, w.cost_bbox, w.cost_giou, w.focal_alpha, w.focal_gamma
        )

    def matched_losses(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Target], text_mask: Tensor, num_boxes: float
    ) -> dict[str, Tensor]:
        """Class/bbox/giou losses of one set of predictions after Hungarian matching."""
        indices = self.match(logits.detach(), boxes.detach(), targets, text_mask)
        tokens = matched_token_targets(tuple(logits.shape), indices, targets, logits.device)
        w = self.weights
        cls = token_focal_loss(logits, tokens, text_mask, w.focal_alpha, w.focal_gamma)
        l1, giou = box_losses(*gather_matched_boxes(boxes, indices, targets))
        return {"loss_class": cls / num_boxes, "loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes}

    def denoising_losses(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Target], text_mask: Tensor, meta: DenoisingMeta,
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """Positives: focal to their target's tokens, L1 and GIoU; negatives: focal to no token."""
        indices = list(zip(meta.pos_query, meta.pos_target))
        tokens = matched_token_targets(tuple(logits.shape), indices, targets, logits.device)
        w = self.weights
        norm = num_boxes * meta.num_groups
        cls = token_focal_loss(logits, tokens, text_mask, w.focal_alpha, w.focal_gamma, meta.valid(logits.device))
        l1, giou = box_losses(*gather_matched_boxes(boxes, indices, targets))
        return {"loss_class": cls / norm, "loss_bbox": l1 / norm, "loss_giou": giou / norm}

    def __call__(
        self,
        output: GroundingDINOOutput,
        targets: Sequence[Target],
        dn_meta: DenoisingMeta | None = None,
        num_boxes: float | None = None,
    ) -> dict[str, Tensor]:
        with torch.autocast(output.logits.device.type, enabled=False):  # losses in float32 under AMP
            return self._losses(output, targets, dn_meta, num_boxes)

    def _losses(
        self, output: GroundingDINOOutput, targets: Sequence[Target], dn_meta: DenoisingMeta | None,
        num_boxes: float | None,
    ) -> dict[str, Tensor]:
        if len(targets) != output.logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {output.logits.shape[0]}")
        device = output.logits.device
        nb = global_num_boxes(targets, device) if num_boxes is None else float(num_boxes)
        mask = output.text_mask
        w = self.weights
        losses: dict[str, Tensor] = {}
        factors: dict[str, float] = {}

        def add(parts: dict[str, Tensor], suffix: str, factor: float) -> None:
            for name, value in parts.items():
                losses[name + suffix] = value
                factors[name + suffix] = factor

        last = len(output.layer_logits) - 1
        for i, (lg, bx) in enumerate(zip(output.layer_logits, output.layer_boxes)):
            add(self.matched_losses(lg, bx, targets, mask, nb), "" if i == last else f"_{i}", 1.0 if i == last else w.aux)
        add(self.matched_losses(output.enc_logits, output.enc_boxes, targets, mask, nb), "_enc", w.enc)
        if dn_meta is not None:
            if output.dn_logits is None or output.dn_boxes is None:
                raise ValueError("dn_meta given but the output has no denoising predictions")
            for i, (lg, bx) in enumerate(zip(output.dn_logits, output.dn_boxes)):
                parts = self.denoising_losses(lg, bx, targets, mask, dn_meta, nb)
                add(parts, "_dn" if i == last else f"_dn_{i}", w.dn)
        scale = {"class": w.loss_class, "bbox": w.loss_bbox, "giou": w.loss_giou}
        losses["total"] = sum(scale[_base(k)] * factors[k] * v for k, v in losses.items())
        return losses
