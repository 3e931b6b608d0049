"""Distillation against forgetting (``loss.distill_classes``): the loss, the prompt, the switch in a step."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_train_loop import make_trainer, synthetic_dataset

from gdino.errors import GdinoError
from gdino.train.config import load_config
from gdino.train.criterion import LossWeights
from gdino.train.distill import distill_losses, distill_prompt, soft_focal_per_set, teacher_targets
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


def test_the_switch_adds_a_distillation_term_and_leaves_the_rest_of_the_step_alone(tmp_path, tokenizer):
    overrides = ["data.batch_size=2", "schedule.max_steps=2", "optim.lr=1e-3"]
    cfg, ds = synthetic_dataset(tmp_path, tokenizer, 4, overrides)
    names = [c["name"] for c in json.loads(Path(cfg.data.train).read_text())["categories"]][:6]
    off = make_trainer(cfg, ds, tokenizer)
    on = make_trainer(
        replace(cfg, loss=replace(cfg.loss, distill_classes=tuple(names), distill_weight=0.5)), ds, tokenizer
    )
    assert off.distiller is None and on.distiller is not None
    teacher_before = {k: v.clone() for k, v in on.distiller.teacher.state_dict().items()}
    batch = next(iter(torch.utils.data.DataLoader(on.dataset, batch_sampler=on.batches, collate_fn=on.collate_fn)))
    torch.manual_seed(1)  # the denoising noise is drawn from the global generator
    a = off.train_step(batch)
    torch.manual_seed(1)
    b = on.train_step(batch)
    assert "loss_distill" not in a and math.isfinite(b["loss_distill"]) and b["loss_distill"] > 0
    for name, value in a.items():
        if name not in ("total", "grad_norm"):
            assert b[name] == value, name  # the same forward, the same terms: bit-identical
    assert b["total"] == pytest.approx(a["total"] + 0.5 * b["loss_distill"], rel=1e-6)
    b2 = on.train_step(batch)
    assert b2["loss_distill"] > 0
    for k, v in on.distiller.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k  # the teacher never moves
    moved = any(not torch.equal(v, teacher_before[k]) for k, v in on.model.state_dict().items())
    assert moved
