"""Distillation against forgetting: a frozen copy of the starting model (the teacher) scores every
training batch with a prompt of the classes to keep (``loss.distill_classes``), the model being
trained scores the same images with the same prompt, and a loss pulls its outputs to the teacher's.

Per image, the teacher's ``loss.distill_topk`` most confident queries (highest sigmoid score on
any class token) become soft targets: their boxes and their score on every class token. Each
prediction set of the student (every decoder layer and the encoder proposals) is Hungarian-matched
to them (the criterion's costs, with the teacher's scores as soft token maps); matched queries
learn the teacher's scores (a quality-focal loss, ``|p - t|^gamma * BCE(p, t)``, zero at ``p = t``)
and, weighted by the teacher's score, its box (L1 and GIoU); unmatched queries learn a score of 0.
The image features are shared with the normal forward (the backbone runs once); the extra cost is
the teacher's forward, one more fusion and decoder pass of the student and their backward.

On the regions annotated with a class outside the kept ones (a new class), the teacher often
guesses the old class of the same shape. ``loss.distill_annotated`` says what happens there:
``"keep"`` asks the model to keep those guesses; with ``"zero"`` the annotations win, as they do
over replay's pseudo-labels: teacher queries whose box overlaps (IoU > 0.5) an annotated new-class
box get score 0, so the model learns that the new objects are none of the old classes; with
``"ignore"`` (the default, the best measured) the distillation stays out of those regions: the
teacher queries that overlap an annotated new-class box are dropped from the targets, and the
student queries whose own box overlaps one (IoU > 0.5) and that are not matched to a teacher
target leave the class term (no "score 0" is asked of them), so only the annotations speak there.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from gdino.data.targets import Target
from gdino.errors import GdinoError
from gdino.model.features import GroundingDINOOutput
from gdino.model.grounding_dino import GroundingDINO
from gdino.ops.boxes import box_iou, cxcywh_to_xyxy, elementwise_generalized_box_iou
from gdino.text.captions import classes_to_caption
from gdino.text.positive_map import char_spans_to_token_spans
from gdino.text.tokenize import TokenizedText, tokenize
from gdino.train.criterion import LossWeights
from gdino.train.forward import TrainForward
from gdino.train.matcher import flatten_matches, hungarian_match

#: The values of ``loss.distill_annotated``.
ANNOTATED = ("keep", "zero", "ignore")


@dataclass(frozen=True)
class DistillPrompt:
    """The prompt of the classes to keep: ``text`` (one caption, on the host) and ``class_tokens``
    ``[L]`` bool, True on the token columns of a class name (not on [CLS], "." or [SEP])."""

    text: TokenizedText
    class_tokens: Tensor


def distill_prompt(tokenizer: Any, classes: Sequence[str], max_text_len: int) -> DistillPrompt:
    """One caption of ``classes`` (``"a . b ."``); a caption longer than ``max_text_len`` tokens is an error."""
    caption, spans = classes_to_caption(list(classes))
    count = len(tokenizer(caption)["input_ids"])
    if count > max_text_len:
        raise GdinoError(
            f"loss.distill_classes: the prompt of {len(classes)} classes has {count} tokens, more than the "
            f"model's {max_text_len}; keep fewer classes"
        )
    text = tokenize(tokenizer, [caption], max_text_len)
    class_tokens = torch.zeros(text.input_ids.shape[1], dtype=torch.bool)
    for tokens in char_spans_to_token_spans(tokenizer, caption, spans):
        class_tokens[tokens] = True
    return DistillPrompt(text, class_tokens)


def teacher_targets(
    logits: Tensor,
    boxes: Tensor,
    class_tokens: Tensor,
    topk: int,
    suppress: Tensor | None = None,
    drop: Tensor | None = None,
) -> list[Target]:
    """Soft targets from the teacher's ``logits [B, Q, L]`` and ``boxes [B, Q, 4]``: per image, its
    ``topk`` queries of highest score (max sigmoid over ``class_tokens [L]``), each with its box
    and its sigmoid scores as a float token map (zero off the class tokens). Queries where
    ``suppress [B, Q]`` (bool) is True score 0 (they rank last and, when picked, ask for 0);
    queries where ``drop [B, Q]`` is True are never targets (an image may then get fewer than
    ``topk``)."""
    cols = class_tokens.to(logits.device)
    probs = logits.float().masked_fill(~cols, float("-inf")).sigmoid()
    if suppress is not None:
        probs = probs.masked_fill(suppress.to(probs.device)[..., None], 0.0)
    rank = probs.max(-1).values
    if drop is not None:
        drop = drop.to(probs.device)
        rank = rank.masked_fill(drop, -1.0)  # below every score
    k = min(topk, logits.shape[1])
    best = rank.topk(k, dim=1).indices
    out = []
    for b in range(logits.shape[0]):
        idx = best[b]
        if drop is not None:
            idx = idx[~drop[b, idx]]
        out.append(
            Target(
                boxes=boxes[b, idx].float(),
                token_map=probs[b, idx],
                labels=torch.zeros(len(idx), dtype=torch.long, device=logits.device),
            )
        )
    return out


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def other_class_boxes(targets: Sequence[Target], kept: Sequence[str]) -> list[Tensor]:
    """Per image, the annotated boxes ``[M, 4]`` (cxcywh) whose class or phrase is not one of ``kept``
    (compared lower-cased, whitespace collapsed; a grounding phrase may hold any text)."""
    keep = {_key(c) for c in kept}
    out = []
    for t in targets:
        other = [_key(t.phrases[i]) not in keep for i in t.labels.tolist()]
        out.append(t.boxes[torch.tensor(other, dtype=torch.bool, device=t.boxes.device)])
    return out


def annotated_queries(boxes: Tensor, annotated: Sequence[Tensor], iou: float = 0.5) -> Tensor:
    """``[N, Q]`` bool: queries of ``boxes [N, Q, 4]`` (cxcywh; ``N`` = sets x images, set-major,
    images = ``len(annotated)``) whose box overlaps one of their image's ``annotated`` boxes by
    IoU > ``iou``."""
    b = len(annotated)
    out = torch.zeros(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    for n in range(boxes.shape[0]):
        other = annotated[n % b]
        if len(other):
            overlap, _ = box_iou(cxcywh_to_xyxy(boxes[n].float()), cxcywh_to_xyxy(other.to(boxes.device).float()))
            out[n] = overlap.max(1).values > iou
    return out


def soft_focal_per_set(logits: Tensor, targets: Tensor, mask: Tensor, gamma: float = 2.0) -> Tensor:
    """``sum |sigmoid(x) - t|^gamma * BCE(x, t)`` per set of ``logits [S, B, Q, L]``, ``targets``
    in [0, 1] of the same shape, over the True entries of ``mask`` (broadcast): ``[S]`` float32.
    Zero where the scores equal the targets (unlike the focal loss with soft targets)."""
    x = logits.float().masked_fill(~mask, 0.0)
    t = targets.float()
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none") * (x.sigmoid() - t).abs() ** gamma
    return loss.masked_fill(~mask, 0.0).flatten(1).sum(1)


def distill_losses(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[Target],
    class_tokens: Tensor,
    weights: LossWeights,
    ignore: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Class / L1 / GIoU distillation losses ``[S]`` of ``S`` student prediction sets
    ``logits [S, B, Q, L]``, ``boxes [S, B, Q, 4]`` against the teacher's soft ``targets`` of the same
    sets (``S * B`` of them, set-major, from :func:`teacher_targets` on the teacher's sets), each set
    and image matched on its own; divided by the teacher's summed scores per set. Queries where
    ``ignore [S, B, Q]`` (bool) is True and that are not matched to a target leave the class term
    (unmatched queries otherwise learn a score of 0)."""
    w = weights
    sets, b, q, length = logits.shape
    device = logits.device
    mask = class_tokens.to(device)[:length][None].expand(sets * b, length)
    indices = hungarian_match(  # the S * B (set, image) pairs as one batch
        logits.detach().reshape(sets * b, q, length),
        boxes.detach().reshape(sets * b, q, 4),
        targets,
        mask,
        w.cost_class,
        w.cost_bbox,
        w.cost_giou,
        w.focal_alpha,
        w.focal_gamma,
        length,
    )
    _, k_idx, q_idx, g_idx = (
        x.to(device, non_blocking=True) for x in flatten_matches(indices, [len(t) for t in targets])
    )
    s_idx, b_idx = k_idx // b, k_idx % b
    maps = torch.cat([t.token_map[:, :length] for t in targets]).to(device, torch.float32)
    soft = torch.zeros(logits.shape, dtype=torch.float32, device=device)
    soft[s_idx, b_idx, q_idx] = maps[g_idx]
    cls_mask = mask.view(sets, b, 1, length)
    if ignore is not None:
        matched = torch.zeros(logits.shape[:3], dtype=torch.bool, device=device)
        matched[s_idx, b_idx, q_idx] = True
        cls_mask = cls_mask & ~(ignore.to(device) & ~matched)[..., None]
    cls = soft_focal_per_set(logits, soft, cls_mask, w.focal_gamma)
    score = maps.max(-1).values
    tgt = torch.cat([t.boxes for t in targets]).to(device, torch.float32)[g_idx]
    pred = boxes[s_idx, b_idx, q_idx].float()
    l1 = (pred - tgt).abs().sum(-1) * score[g_idx]
    giou = (1 - elementwise_generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt))) * score[g_idx]
    zeros = pred.new_zeros(sets)
    per_target_set = torch.cat([torch.full((len(t),), i // b, dtype=torch.long) for i, t in enumerate(targets)])
    norm = zeros.index_add(0, per_target_set.to(device), score).clamp(min=1.0)
    return cls / norm, zeros.index_add(0, s_idx, l1) / norm, zeros.index_add(0, s_idx, giou) / norm


def prediction_sets(output: GroundingDINOOutput, length: int) -> tuple[Tensor, Tensor]:
    """Every decoder layer's and the encoder proposals' logits ``[S, B, Q, length]`` and boxes."""
    logits = torch.stack([lg[..., :length] for lg in (*output.layer_logits, output.enc_logits)])
    return logits, torch.stack([*output.layer_boxes, output.enc_boxes])


class DistillForward(TrainForward):
    """:class:`TrainForward` plus the student's pass on the distillation prompt (same image
    features, no denoising): returns ``(output, dn_meta, text_len, distill_output)``."""

    def __init__(self, model: GroundingDINO, denoising: Any, prompt: DistillPrompt) -> None:
        super().__init__(model, denoising)
        self.prompt = prompt

    def forward(  # type: ignore[override]
        self, pixel_values: Tensor, pixel_mask: Tensor, captions: list[str], targets: list
    ) -> tuple[Any, Any, int, GroundingDINOOutput]:
        text, text_features, image_features = self.encode(pixel_values, pixel_mask, captions)
        output, meta, text_len = self.decode(text, text_features, image_features, targets)
        keep = self.model.encode_text(self.prompt.text.to(pixel_values.device))
        return output, meta, text_len, self.model.forward_features(image_features, keep)


class Distiller:
    """The teacher (a frozen copy of the model as given) and the distillation loss.

    ``add_to(losses, student, pixel_values, pixel_mask, annotations)`` runs the teacher on the batch
    and adds ``loss_distill`` (the weighted class/L1/GIoU sum over the student's prediction sets,
    with the criterion's per-set factors) to ``losses``; ``total`` grows by ``weight * loss_distill``.
    ``annotated`` (``loss.distill_annotated``) says what happens on ``annotations`` (the batch's
    targets) of classes other than ``classes``: ``"keep"`` the teacher's scores there, ``"zero"``
    them (the teacher's queries there ask for score 0), or ``"ignore"`` the regions (the teacher's
    queries there are dropped, and the student's unmatched queries there leave the class term).
    The teacher runs in float32 (outside autocast), as the losses do."""

    def __init__(
        self,
        model: GroundingDINO,
        classes: Sequence[str],
        weight: float,
        topk: int,
        weights: LossWeights,
        annotated: str = "ignore",
    ):
        if annotated not in ANNOTATED:
            raise GdinoError(f"distillation: annotated={annotated!r}; choose from {', '.join(ANNOTATED)}")
        if model.tokenizer is None:
            raise GdinoError("the model has no tokenizer attached: distillation needs one")
        self.teacher = copy.deepcopy(model).eval()
        self.teacher.requires_grad_(False)
        self.prompt = distill_prompt(model.tokenizer, classes, model.config.max_text_len)
        self.weight, self.topk, self.weights = weight, topk, weights
        self.classes, self.annotated = tuple(classes), annotated

    @torch.no_grad()
    def teacher_output(self, pixel_values: Tensor, pixel_mask: Tensor) -> GroundingDINOOutput:
        t = self.teacher
        image = t.encode_image(pixel_values, pixel_mask)
        return t.forward_features(image, t.encode_text(self.prompt.text.to(pixel_values.device)))

    def add_to(
        self,
        losses: dict[str, Tensor],
        student: GroundingDINOOutput,
        pixel_values: Tensor,
        pixel_mask: Tensor,
        annotations: Sequence[Target] = (),
    ) -> dict[str, Tensor]:
        with torch.autocast(pixel_values.device.type, enabled=False):
            teacher = self.teacher_output(pixel_values, pixel_mask)
            length = self.prompt.class_tokens.shape[0]
            w = self.weights
            last = len(student.layer_logits) - 1
            logits, boxes = prediction_sets(student, length)
            t_logits, t_boxes = prediction_sets(teacher, length)
            t_boxes = t_boxes.flatten(0, 1)
            suppress = drop = ignore = None
            if self.annotated != "keep" and annotations:  # the annotations of other classes win
                other = other_class_boxes(annotations, self.classes)
                on_other = annotated_queries(t_boxes, other)
                if self.annotated == "zero":
                    suppress = on_other
                else:  # "ignore": no teacher target there, no "score 0" asked of the student there
                    drop = on_other
                    ignore = annotated_queries(boxes.detach().flatten(0, 1), other).view(boxes.shape[:3])
            targets = teacher_targets(
                t_logits.flatten(0, 1), t_boxes, self.prompt.class_tokens, self.topk, suppress, drop
            )
            cls, l1, giou = distill_losses(logits, boxes, targets, self.prompt.class_tokens, w, ignore)
            factors = torch.tensor([1.0 if i == last else w.aux for i in range(last + 1)] + [w.enc])
            factors = factors.to(cls.device, non_blocking=True)
            term = ((w.loss_class * cls + w.loss_bbox * l1 + w.loss_giou * giou) * factors).sum()
        out = dict(losses)
        out["loss_distill"] = term
        out["total"] = losses["total"] + self.weight * term
        return out


__all__ = [
    "ANNOTATED",
    "DistillForward",
    "DistillPrompt",
    "Distiller",
    "annotated_queries",
    "distill_losses",
    "distill_prompt",
    "other_class_boxes",
    "soft_focal_per_set",
    "teacher_targets",
]
