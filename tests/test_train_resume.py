"""Checkpoints and exact resume: N steps straight == k steps, stop, resume, N - k steps."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_loop import make_trainer, synthetic_dataset
from torch import nn

from gdino.errors import CheckpointError
from gdino.train.checkpoint import capture_rng, find_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from gdino.train.ema import ModelEMA

pytestmark = pytest.mark.usefixtures("one_thread")


def test_checkpoints_are_atomic_pruned_and_safe(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, step, {"w": torch.full((2,), float(step))}, {"step": step, "rng": capture_rng()}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000003"]
    assert find_checkpoint(tmp_path) == root / "step_00000003"  # a run folder works too
    model, ema, state = load_checkpoint(root)
    assert torch.equal(model["w"], torch.full((2,), 3.0)) and ema is None and state["step"] == 3

    # a pickle that carries code is refused by weights_only loading
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"step": 4, "x": Evil()}, root / "step_00000003" / "state.pt")
    with pytest.raises(CheckpointError, match="unreadable training checkpoint"):
        load_checkpoint(root)
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_rng_capture_restores_every_generator():
    state = capture_rng()
    a = (torch.rand(3), random.random(), np.random.rand(2))
    restore_rng(state)
    b = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_ema_update_matches_the_formula():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(0.0)
    ema = ModelEMA(lin, decay=0.9, warmup=1.0)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    ema.update(lin)
    d = 0.9 * (1 - np.exp(-1.0))  # the warmed-up decay after one update
    assert ema.current_decay() == pytest.approx(d)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), d * 1.0 + (1 - d) * 3.0), atol=1e-6)
    copy = nn.Linear(2, 1)
    ema.copy_to(copy)
    assert torch.equal(copy.weight, ema.shadow["weight"])
    restored = ModelEMA(nn.Linear(2, 1))
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.shadow["weight"], ema.shadow["weight"])


OVERRIDES = [
    "data.batch_size=1",
    "schedule.max_steps=4",
    "schedule.kind=cosine",
    "optim.lr=1e-3",
    "optim.ema=true",
    "optim.ema_decay=0.9",
]


def test_resume_is_exact(tmp_path, tokenizer):
    """3 images x batch 1: the interruption at step 2 is mid-epoch, and the resumed run crosses an
    epoch end; augmentation, prompt sampling, denoising noise, drop-path, EMA and the schedule all
    continue exactly."""
    cfg, ds = synthetic_dataset(tmp_path, tokenizer, 3, OVERRIDES)
    straight_cfg = cfg.__class__(**{**cfg.__dict__, "output_dir": str(tmp_path / "straight")})
    straight = make_trainer(straight_cfg, ds, tokenizer)
    straight.fit()

    first = make_trainer(cfg, ds, tokenizer)
    first.fit(stop_after=2)
    assert first.state.step == 2 and find_checkpoint(cfg.output_dir).name == "step_00000002"
    torch.manual_seed(123)  # a fresh process would not share the first run's RNG state
    resumed = make_trainer(cfg, ds, tokenizer)
    resumed.fit(resume=True)
    assert resumed.state.step == straight.state.step == 4
    assert resumed.state.epoch == straight.state.epoch == 1

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], first.model.state_dict()[k])]
    assert changed, "training did not change the weights"
    diff = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"parameters differ after resume: {sorted(diff.items(), key=lambda kv: -kv[1])[:3]}"
    for k in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]), k
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert straight.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()


def test_resume_without_checkpoint(tmp_path, tokenizer):
    from gdino.errors import GdinoError

    cfg, ds = synthetic_dataset(tmp_path, tokenizer, 1, ["data.batch_size=1", "schedule.max_steps=1"])
    trainer = make_trainer(cfg, ds, tokenizer)
    assert trainer.resume() is False  # a new run folder: start from scratch
    with pytest.raises(GdinoError, match="no training checkpoint"):
        trainer.resume(Path(tmp_path / "elsewhere"))
