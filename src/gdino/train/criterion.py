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
from gdino.train.losses import box_losses_per_set, focal_loss_per_set, padded_token_maps, used_columns
from gdino.train.matcher import flatten_matches, hungarian_match


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
    """Boxes summed over all processes, divided by the world size (DDP averages gradients), >= 1.
    Box counts are shapes: no host sync without a process group."""
    local = float(sum(len(t) for t in targets))
    if not (dist.is_available() and dist.is_initialized()):
        return max(local, 1.0)
    n = torch.tensor(local, device=device)
    dist.all_reduce(n)
    return max(n.item() / dist.get_world_size(), 1.0)


@dataclass
class SetCriterion:
    """``criterion(output, targets, dn_meta=None, num_boxes=None, text_len=None) -> {name: scalar}``.

    Names: ``loss_{class,bbox,giou}`` for the last decoder layer, with suffix ``_{i}`` for
    intermediate layer ``i``, ``_enc`` for the encoder proposals, ``_dn`` / ``_dn_{i}`` for the
    denoising queries; values are unweighted (float32). ``total`` is the weighted sum.
    Each layer and the encoder output are matched separately, but in one batched pass: one cost
    computation and one device-to-host copy for all of them, then scipy's Hungarian per layer and
    image; the loss terms of every layer are computed together too. Every loss is divided by
    ``num_boxes`` (the denoising ones by ``num_boxes * groups``); when None it is computed with
    :func:`global_num_boxes`. ``text_len``: the longest prompt's token count (the text features'
    width), which saves reading it from the mask (a host sync on an accelerator).
    """

    weights: LossWeights = field(default_factory=LossWeights)

    def set_losses(
        self, logits: Tensor, boxes: Tensor, targets: Sequence[Target], text_mask: Tensor, num_boxes: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Class/bbox/giou losses ``[S]`` of ``S`` prediction sets ``logits [S, B, Q, L']`` (cut to the
        used token columns), ``boxes [S, B, Q, 4]``, each Hungarian-matched on its own."""
        w = self.weights
        sets, _, _, used = logits.shape
        device = logits.device
        indices = hungarian_match(
            logits.detach(),
            boxes.detach(),
            targets,
            text_mask,
            w.cost_class,
            w.cost_bbox,
            w.cost_giou,
            w.focal_alpha,
            w.focal_gamma,
            used,
        )
        s_idx, b_idx, q_idx, g_idx = (
            x.to(device, non_blocking=True) for x in flatten_matches(indices, [len(t) for t in targets])
        )
        tgt_boxes = torch.cat([t.boxes for t in targets]).to(device, torch.float32)
        tgt_tokens = padded_token_maps(targets, used, device)
        tokens = torch.zeros(logits.shape, dtype=torch.float32, device=device)
        tokens[s_idx, b_idx, q_idx] = tgt_tokens[g_idx]
        cls = focal_loss_per_set(logits, tokens, text_mask, w.focal_alpha, w.focal_gamma)
        l1, giou = box_losses_per_set(boxes[s_idx, b_idx, q_idx], tgt_boxes[g_idx], s_idx, sets)
        return cls / num_boxes, l1 / num_boxes, giou / num_boxes

    def denoising_losses(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: Sequence[Target],
        text_mask: Tensor,
        meta: DenoisingMeta,
        num_boxes: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Denoising losses ``[S]`` of ``logits [S, B, N, L']`` / ``boxes [S, B, N, 4]``: positives get
        focal to their target's tokens, L1 and GIoU; negatives focal to no token."""
        w = self.weights
        sets, device = logits.shape[0], logits.device
        b_idx, q_idx, g_idx = (x.to(device, non_blocking=True) for x in meta.flat_positives([len(t) for t in targets]))
        tgt_boxes = torch.cat([t.boxes for t in targets]).to(device, torch.float32)
        tokens = torch.zeros(logits.shape[1:], dtype=torch.float32, device=device)
        tokens[b_idx, q_idx] = padded_token_maps(targets, logits.shape[-1], device)[g_idx]
        valid = meta.valid("cpu").to(device, non_blocking=True)
        cls = focal_loss_per_set(logits, tokens, text_mask, w.focal_alpha, w.focal_gamma, valid)
        m = len(b_idx)
        pred = boxes[:, b_idx, q_idx].reshape(-1, 4)
        set_index = torch.arange(sets, device=device).repeat_interleave(m)
        l1, giou = box_losses_per_set(pred, tgt_boxes[g_idx].repeat(sets, 1), set_index, sets)
        norm = num_boxes * meta.num_groups
        return cls / norm, l1 / norm, giou / norm

    def __call__(
        self,
        output: GroundingDINOOutput,
        targets: Sequence[Target],
        dn_meta: DenoisingMeta | None = None,
        num_boxes: float | None = None,
        text_len: int | None = None,
    ) -> dict[str, Tensor]:
        with torch.autocast(output.logits.device.type, enabled=False):  # losses in float32 under AMP
            return self._losses(output, targets, dn_meta, num_boxes, text_len)

    def _losses(
        self,
        output: GroundingDINOOutput,
        targets: Sequence[Target],
        dn_meta: DenoisingMeta | None,
        num_boxes: float | None,
        text_len: int | None,
    ) -> dict[str, Tensor]:
        if len(targets) != output.logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {output.logits.shape[0]}")
        device = output.logits.device
        nb = global_num_boxes(targets, device) if num_boxes is None else float(num_boxes)
        used = used_columns(output.text_mask) if text_len is None else int(text_len)
        mask = output.text_mask[:, :used]
        w = self.weights
        last = len(output.layer_logits) - 1
        logits = torch.stack([lg[..., :used] for lg in (*output.layer_logits, output.enc_logits)])
        boxes = torch.stack([*output.layer_boxes, output.enc_boxes])
        suffixes = ["" if i == last else f"_{i}" for i in range(last + 1)] + ["_enc"]
        factors = [1.0 if i == last else w.aux for i in range(last + 1)] + [w.enc]
        terms: list[tuple[str, Tensor, float]] = []
        values = self.set_losses(logits, boxes, targets, mask, nb)
        if dn_meta is not None:
            if output.dn_logits is None or output.dn_boxes is None:
                raise ValueError("dn_meta given but the output has no denoising predictions")
            dn_logits = torch.stack([lg[..., :used] for lg in output.dn_logits])
            dn_values = self.denoising_losses(dn_logits, torch.stack(list(output.dn_boxes)), targets, mask, dn_meta, nb)
            values = (
                torch.cat((values[0], dn_values[0])),
                torch.cat((values[1], dn_values[1])),
                torch.cat((values[2], dn_values[2])),
            )
            suffixes += ["_dn" if i == last else f"_dn_{i}" for i in range(len(output.dn_logits))]
            factors += [w.dn] * len(output.dn_logits)
        losses: dict[str, Tensor] = {}
        for base, vec, scale in zip(
            ("loss_class", "loss_bbox", "loss_giou"), values, (w.loss_class, w.loss_bbox, w.loss_giou)
        ):
            for k, suffix in enumerate(suffixes):
                losses[base + suffix] = vec[k]
            terms.append((base, vec, scale))
        weights = torch.tensor(factors, dtype=torch.float32).to(device, non_blocking=True)
        losses["total"] = torch.stack([scale * (vec * weights).sum() for _, vec, scale in terms]).sum()
        return losses
