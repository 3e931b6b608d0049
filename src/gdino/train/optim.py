"""Optimizer parameter groups (backbone / text encoder multipliers, freezing) and LR schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gdino.train.sections import ConfigError, ModelSection, OptimSection, ScheduleSection

#: parameters that never receive a gradient in Grounding DINO (BERT's pooler output is unused)
UNUSED_PREFIXES = ("bert.pooler.",)
#: deformable sampling offsets and the decoder's reference-point head (Open-GroundingDino: lr x0.1)
OFFSET_KEYS = ("sampling_offsets", "ref_point_head")


def group_of(name: str) -> str:
    """``"backbone"``, ``"text"``, ``"offsets"`` or ``"other"`` for a parameter name."""
    if name.startswith("backbone."):
        return "backbone"
    if name.startswith("bert."):
        return "text"
    if any(k in name for k in OFFSET_KEYS):
        return "offsets"
    return "other"


def apply_freezing(model: nn.Module, cfg: ModelSection) -> int:
    """Set ``requires_grad`` from the config; returns the number of frozen parameters (elements)."""
    frozen = 0
    for name, p in model.named_parameters():
        group = group_of(name)
        freeze = (
            name.startswith(UNUSED_PREFIXES)
            or (group == "backbone" and cfg.freeze_backbone)
            or (group == "text" and cfg.freeze_text)
        )
        p.requires_grad_(not freeze)
        frozen += p.numel() if freeze else 0
    return frozen


def param_groups(model: nn.Module, cfg: OptimSection) -> list[dict]:
    """AdamW groups of the trainable parameters, each with its ``lr`` and a ``name``."""
    mult = {"backbone": cfg.backbone_lr_mult, "text": cfg.text_lr_mult, "offsets": cfg.offsets_lr_mult, "other": 1.0}
    params: dict[str, list[nn.Parameter]] = {k: [] for k in mult}
    for name, p in model.named_parameters():
        if p.requires_grad:
            params[group_of(name)].append(p)
    return [
        {"params": ps, "lr": cfg.lr * mult[k], "name": k, "weight_decay": cfg.weight_decay}
        for k, ps in params.items()
        if ps
    ]


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, with the fused kernel when every parameter sits on a device
    that has one (CPU and CUDA: about 4x faster than the per-tensor loop on the CPU)."""
    groups = param_groups(model, cfg)
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = bool(devices) and devices <= {"cpu", "cuda"}
    if len(cfg.betas) != 2:
        raise ConfigError(f"optim.betas: expected two values, got {list(cfg.betas)}")
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, fused=fused or None)


@dataclass(frozen=True)
class LrFactor:
    """Learning-rate multiplier at an optimizer step: linear warm-up, then step decay or cosine."""

    warmup_steps: int
    total_steps: int
    kind: str
    milestones: tuple[int, ...]
    gamma: float
    min_ratio: float

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind == "step":
            return warm * self.gamma ** sum(step >= m for m in self.milestones)
        if self.kind == "cosine":
            t = min(1.0, step / max(1, self.total_steps))
            return warm * (self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))
        return warm


def lr_factor(cfg: ScheduleSection, steps_per_epoch: int) -> LrFactor:
    """The schedule of ``cfg`` for a data loader of ``steps_per_epoch`` batches."""
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    milestones = tuple(e * steps_per_epoch for e in cfg.step_epochs)
    return LrFactor(cfg.warmup_steps, total, cfg.kind, milestones, cfg.gamma, cfg.min_lr_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleSection, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
