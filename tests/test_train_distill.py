"""Distillation against forgetting (``loss.distill_classes``): the loss, the prompt, the switch in a step."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_train_loop import make_trainer, synthetic_dataset

from gdino.data.collate import collate
from gdino.data.targets import Target
from gdino.errors import GdinoError
from gdino.train.config import load_config
from gdino.train.criterion import LossWeights
from gdino.train.distill import (
    annotated_queries,
    distill_losses,
    distill_prompt,
    other_class_boxes,
    soft_focal_per_set,
    teacher_targets,
)
from gdino.train.sections import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_soft_focal_matches_the_formula_and_is_zero_at_the_target():
    logits = torch.tensor([[[[-2.0, 0.0, 1.5]]]])  # [S=1, B=1, Q=1, L=3]
    targets = torch.tensor([[[[0.1, 0.5, 0.0]]]])
    mask = torch.tensor([True, True, False])
    expected = 0.0
    for x, t in ((-2.0, 0.1), (0.0, 0.5)):  # the third column is masked out
        p = 1 / (1 + math.exp(-x))
        expected += -(t * math.log(p) + (1 - t) * math.log(1 - p)) * abs(p - t) ** 2
    got = soft_focal_per_set(logits, targets, mask)
    assert got.shape == (1,) and got.item() == pytest.approx(expected, rel=1e-6)
    at_target = soft_focal_per_set(torch.logit(targets.clamp(1e-6, 1 - 1e-6)), targets, torch.ones(3, dtype=torch.bool))
    assert at_target.item() == pytest.approx(0.0, abs=1e-9)


def teacher_outputs(seed: int = 0, b: int = 2, q: int = 12, length: int = 7, confident: int = 3):
    """Teacher logits where only ``confident`` queries per image score above ~1e-13, and distinct boxes."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((b, q, length), -30.0)
    for i in range(b):
        rows = torch.randperm(q, generator=g)[:confident]
        logits[i, rows] = torch.randn(confident, length, generator=g) * 2
    centers = torch.rand(b, q, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(b, q, 2, generator=g) * 0.2 + 0.1
    return logits, torch.cat((centers, sizes), -1)


def test_distill_loss_is_zero_when_the_student_is_the_teacher_and_positive_otherwise():
    logits, boxes = teacher_outputs()
    class_tokens = torch.tensor([False, True, True, False, True, True, False])
    student_logits, student_boxes = logits[None].repeat(2, 1, 1, 1), boxes[None].repeat(2, 1, 1, 1)  # 2 sets
    student_logits[1, :, :, 1] -= 0.5  # set 1 (another layer) scores differently from set 0
    targets = teacher_targets(student_logits.flatten(0, 1), student_boxes.flatten(0, 1), class_tokens, topk=3)
    assert [len(t) for t in targets] == [3, 3, 3, 3]  # sets x images, set-major
    assert all(float(t.token_map[:, ~class_tokens].abs().max()) == 0.0 for t in targets)
    same = distill_losses(student_logits, student_boxes, targets, class_tokens, LossWeights())
    for term in same:
        assert term.shape == (2,) and float(term.abs().max()) < 1e-6
    moved_boxes = student_boxes.clone()
    moved_boxes[1, ..., :2] += 0.05  # set 1: boxes shifted
    moved_logits = student_logits.clone()
    moved_logits[1] += 1.0  # set 1: every score higher
    cls, l1, giou = distill_losses(moved_logits, moved_boxes, targets, class_tokens, LossWeights())
    assert float(cls[0]) < 1e-6 and float(l1[0]) < 1e-6 and float(giou[0]) < 1e-6  # set 0 untouched
    assert float(cls[1]) > 1e-3 and float(l1[1]) > 1e-3 and float(giou[1]) > 1e-3
    # an L1 check against an independent sum: 3 matched boxes per image, each moved by 0.05 in x
    # and y, weighted by the teacher's score, over the summed scores
    scores = torch.cat([t.token_map.max(-1).values for t in targets[2:]])  # set 1's targets
    assert float(l1[1]) == pytest.approx(0.1 * float(scores.sum()) / max(float(scores.sum()), 1.0), rel=1e-4)


def test_distill_prompt_marks_only_the_class_name_tokens(tokenizer):
    prompt = distill_prompt(tokenizer, ["red circle", "blue square"], 256)
    ids = prompt.text.input_ids[0].tolist()
    words = tokenizer.convert_ids_to_tokens(ids)
    assert words == ["[CLS]", "red", "circle", ".", "blue", "square", ".", "[SEP]"]
    assert [w for w, m in zip(words, prompt.class_tokens.tolist()) if m] == ["red", "circle", "blue", "square"]
    with pytest.raises(GdinoError, match="distill_classes"):
        distill_prompt(tokenizer, ["red circle"] * 10, 16)


def test_distill_config_is_checked():
    cfg = load_config("smoke", ['loss.distill_classes=["red circle", "green square"]', "loss.distill_weight=2"])
    assert cfg.loss.distill_classes == ("red circle", "green square") and cfg.loss.distill_weight == 2.0
    with pytest.raises(ConfigError, match="distill_weight"):
        load_config("smoke", ["loss.distill_weight=-1"])
    with pytest.raises(ConfigError, match="distill_topk"):
        load_config("smoke", ["loss.distill_topk=0"])
    assert load_config("smoke", []).loss.distill_annotated == "ignore"
    assert load_config("smoke", ["loss.distill_annotated=zero"]).loss.distill_annotated == "zero"
    assert load_config("smoke", ["loss.distill_annotated=keep"]).loss.distill_annotated == "keep"
    with pytest.raises(ConfigError, match="distill_annotated"):
        load_config("smoke", ["loss.distill_annotated=drop"])


def test_only_boxes_of_other_classes_count_as_annotated():
    target = Target(
        boxes=torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]),
        token_map=torch.zeros(3, 8, dtype=torch.bool),
        labels=torch.tensor([0, 1, 0]),
        phrases=["blue circle", "red  Square"],
    )
    (other,) = other_class_boxes([target], ["Red square", "green circle"])  # names compared cleaned
    assert torch.equal(other, target.boxes[[0, 2]])
    assert other_class_boxes([target], ["blue circle", "red square"])[0].shape == (0, 4)


def test_annotated_queries_follow_the_iou_threshold_per_image_of_each_set():
    # image 0 has one annotated box, image 1 none; queries (cxcywh): the annotated box itself, the
    # box shifted by half its width (IoU = 0.02 / (0.04 + 0.04 - 0.02) = 1/3) and a far one
    ann = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    queries = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    boxes = queries[None].repeat(4, 1, 1)  # 2 sets x 2 images, set-major: rows 0 and 2 are image 0
    got = annotated_queries(boxes, [ann, torch.zeros(0, 4)])
    expected_image0 = torch.tensor([True, False, False])
    assert torch.equal(got[0], expected_image0) and torch.equal(got[2], expected_image0)
    assert not got[1].any() and not got[3].any()
    assert torch.equal(annotated_queries(boxes, [ann, ann], iou=0.3)[1], torch.tensor([True, True, False]))


def test_suppressed_teacher_queries_rank_last_and_ask_for_zero():
    logits, boxes = teacher_outputs(confident=3)  # 2 images, 12 queries, 3 confident per image
    class_tokens = torch.tensor([False, True, True, False, True, True, False])
    scores = logits.masked_fill(~class_tokens, float("-inf")).sigmoid().max(-1).values
    top = int(scores[0].argmax())  # image 0's most confident query
    suppress = torch.zeros(scores.shape, dtype=torch.bool)
    suppress[0, top] = True
    plain = teacher_targets(logits, boxes, class_tokens, topk=3)
    got = teacher_targets(logits, boxes, class_tokens, topk=3, suppress=suppress)
    assert any(torch.equal(b, boxes[0, top]) for b in plain[0].boxes)
    assert not any(torch.equal(b, boxes[0, top]) for b in got[0].boxes)  # ranks below every unsuppressed query
    assert torch.equal(got[1].token_map, plain[1].token_map) and torch.equal(got[1].boxes, plain[1].boxes)
    everything = teacher_targets(logits, boxes, class_tokens, topk=12, suppress=suppress)
    last = everything[0]
    assert torch.equal(last.boxes[-1], boxes[0, top]) and float(last.token_map[-1].abs().max()) == 0.0


def test_dropped_teacher_queries_are_never_targets():
    logits, boxes = teacher_outputs(confident=5)  # 2 images, 12 queries, 5 confident (distinct scores) per image
    class_tokens = torch.tensor([False, True, True, False, True, True, False])
    scores = logits.masked_fill(~class_tokens, float("-inf")).sigmoid().max(-1).values
    order = scores[0].argsort(descending=True)
    assert bool((scores[0, order[:4]].diff() < 0).all())  # no ties among the first four
    drop = torch.zeros(scores.shape, dtype=torch.bool)
    drop[0, order[0]] = True  # image 0's most confident query
    got = teacher_targets(logits, boxes, class_tokens, topk=3, drop=drop)
    assert len(got[0]) == 3 and torch.equal(got[0].boxes, boxes[0, order[1:4]])  # the next three, in order
    assert torch.equal(got[0].token_map, logits[0, order[1:4]].masked_fill(~class_tokens, float("-inf")).sigmoid())
    plain = teacher_targets(logits, boxes, class_tokens, topk=3)
    assert torch.equal(got[1].boxes, plain[1].boxes)  # image 1 untouched
    everything = teacher_targets(logits, boxes, class_tokens, topk=12, drop=drop)
    assert [len(t) for t in everything] == [11, 12] and len(everything[0].labels) == 11
    assert not any(torch.equal(b, boxes[0, order[0]]) for b in everything[0].boxes)


def _soft_bce(x: float, t: float) -> float:
    """``|p - t|^2 * BCE(x, t)`` written out (the reference of :func:`soft_focal_per_set`)."""
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p)) * abs(p - t) ** 2


def test_ignore_masks_unmatched_queries_on_annotated_boxes_and_drops_teacher_targets_there():
    # One image, one prediction set, 2 class tokens. The teacher is confident on two queries: one
    # at T (an old object) and one on the annotated new-class box A. The student's queries: q0 at T
    # scoring what the teacher scores there, q1 on A, q2 far from both.
    t_box, a_box = [0.25, 0.25, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]
    class_tokens = torch.tensor([True, True])
    t_logits = torch.tensor([[[1.0, -1.0], [2.0, 0.5], [-30.0, -30.0]]])  # [B=1, Q=3, L=2]
    t_boxes = torch.tensor([[t_box, a_box, [0.5, 0.1, 0.1, 0.05]]])
    s_logits = torch.tensor([[[[1.0, -1.0], [0.3, -0.7], [-0.4, 0.2]]]])  # [S=1, B=1, Q=3, L=2]
    s_boxes = torch.tensor([[[t_box, [0.71, 0.7, 0.2, 0.2], [0.1, 0.85, 0.1, 0.1]]]])
    annotated = [torch.tensor([a_box])]
    drop = annotated_queries(t_boxes, annotated)
    assert drop.tolist() == [[False, True, False]]
    ignore = annotated_queries(s_boxes.flatten(0, 1), annotated).view(1, 1, 3)
    assert ignore.tolist() == [[[False, True, False]]]  # IoU(q1, A) = 0.038 / (0.08 - 0.038) > 0.5
    assert torch.equal(teacher_targets(t_logits, t_boxes, class_tokens, topk=1)[0].boxes[0], torch.tensor(a_box))
    targets = teacher_targets(t_logits, t_boxes, class_tokens, topk=1, drop=drop)  # the next best instead
    assert len(targets[0]) == 1 and torch.equal(targets[0].boxes[0], torch.tensor(t_box))
    cls, l1, giou = distill_losses(s_logits, s_boxes, targets, class_tokens, LossWeights(), ignore)
    # q0 is matched to T and scores its targets exactly (0); q1 is masked; q2 asks for 0 on both tokens
    score = 1 / (1 + math.exp(-1.0))  # the target's max score (< 1: the normalizer is 1)
    expected = _soft_bce(-0.4, 0.0) + _soft_bce(0.2, 0.0)
    assert float(cls[0]) == pytest.approx(expected, rel=1e-5)
    assert float(l1[0]) == pytest.approx(0.0, abs=1e-6) and float(giou[0]) == pytest.approx(0.0, abs=1e-6)
    assert score < 1
    # without the mask q1, unmatched too, adds its own "score 0" term
    unmasked, *_ = distill_losses(s_logits, s_boxes, targets, class_tokens, LossWeights())
    assert float(unmasked[0]) == pytest.approx(expected + _soft_bce(0.3, 0.0) + _soft_bce(-0.7, 0.0), rel=1e-5)
    # a matched query on an annotated box stays in: with the teacher's A query kept as a target,
    # q1 is matched to it and learns the teacher's scores there despite the mask
    kept = teacher_targets(t_logits, t_boxes, class_tokens, topk=2)
    assert len(kept[0]) == 2
    cls_kept, *_ = distill_losses(s_logits, s_boxes, kept, class_tokens, LossWeights(), ignore)
    p_a = [1 / (1 + math.exp(-v)) for v in (2.0, 0.5)]
    norm = max(score + max(p_a), 1.0)
    want = (expected + _soft_bce(0.3, p_a[0]) + _soft_bce(-0.7, p_a[1])) / norm
    assert float(cls_kept[0]) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("mode", ["zero", "ignore"])
def test_annotated_modes_change_the_loss_only_for_annotations_of_other_classes(tmp_path, tokenizer, mode):
    cfg, ds = synthetic_dataset(tmp_path, tokenizer, 4, ["data.batch_size=2", "schedule.max_steps=1"])
    names = tuple(c["name"] for c in json.loads(Path(cfg.data.train).read_text())["categories"])[:6]
    trainer = make_trainer(
        replace(cfg, loss=replace(cfg.loss, distill_classes=names, distill_annotated=mode)), ds, tokenizer
    )
    d = trainer.distiller
    assert d is not None and d.annotated == mode
    batch = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_sampler=trainer.batches, collate_fn=collate)))
    pv, pm = batch.pixel_values, batch.pixel_mask
    with torch.no_grad():
        *_, student = trainer.forward_module(pv, pm, batch.captions, batch.targets)
        teacher = d.teacher_output(pv, pm)
    length = d.prompt.class_tokens.shape[0]
    scores = teacher.layer_logits[-1][0, :, :length].masked_fill(~d.prompt.class_tokens, float("-inf")).amax(-1)
    box = teacher.layer_boxes[-1][0, scores.argmax()]  # image 0's most confident query of the last layer

    def annotations(phrase: str) -> list[Target]:
        empty = Target(torch.zeros(0, 4), torch.zeros(0, 256, dtype=torch.bool), torch.zeros(0, dtype=torch.long))
        one = Target(box[None].clone(), torch.zeros(1, 256, dtype=torch.bool), torch.zeros(1, dtype=torch.long))
        one.phrases = [phrase]
        return [one, empty]

    zero = torch.tensor(0.0)
    with torch.no_grad():
        none = d.add_to({"total": zero}, student, pv, pm)["loss_distill"]
        kept_class = d.add_to({"total": zero}, student, pv, pm, annotations(names[0].upper()))["loss_distill"]
        other_class = d.add_to({"total": zero}, student, pv, pm, annotations("a class to learn"))["loss_distill"]
        d.annotated = "keep"
        off = d.add_to({"total": zero}, student, pv, pm, annotations("a class to learn"))["loss_distill"]
    assert torch.equal(none, kept_class) and torch.equal(none, off)  # nothing to suppress / switch off
    assert math.isfinite(float(other_class)) and not torch.equal(none, other_class)
