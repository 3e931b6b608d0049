"""Named training presets: starting points that a YAML file or ``key=value`` overrides refine.

- ``coco-finetune``: the Swin-T release fine-tuned on a COCO-format dataset, every part trained
  (backbone and text encoder at 0.1x the learning rate), 12 epochs with drops at 8 and 11.
- ``small-data``: a few hundred images; backbone and text encoder frozen (keeps more zero-shot
  ability and memory), EMA on.
- ``smoke``: the ``small-minilm`` model from scratch (pretrained MiniLM text encoder) on generated
  synthetic shapes; a CPU-sized run for benchmarks and CI.
- ``smoke-general``: the ``smoke`` model with more data, 192 px, batch 2 and a step schedule sized
  for about 17 CPU-minutes at one thread, tuned on the ``textured`` generator variant; data from
  ``data.synthetic_variant`` (shapes, textured, crowded).
"""

from __future__ import annotations

from dataclasses import replace

from gdino.errors import GdinoError
from gdino.train.sections import (
    CheckpointSection,
    DataSection,
    EvalSection,
    LossSection,
    ModelSection,
    OptimSection,
    ScheduleSection,
    TrainConfig,
)


def coco_finetune() -> TrainConfig:
    return TrainConfig(
        model=ModelSection(preset="swin-t", weights="grounding-dino-tiny"),
        data=DataSection(batch_size=4, num_workers=4),
        optim=OptimSection(lr=1e-4, backbone_lr_mult=0.1, text_lr_mult=0.1),
        schedule=ScheduleSection(epochs=12, warmup_steps=1000, kind="step", step_epochs=(8, 11)),
        output_dir="runs/coco-finetune",
    )


def small_data() -> TrainConfig:
    return TrainConfig(
        model=ModelSection(preset="swin-t", weights="grounding-dino-tiny", freeze_backbone=True, freeze_text=True),
        data=DataSection(batch_size=2, num_workers=2),
        optim=OptimSection(lr=1e-4, ema=True, ema_decay=0.999),
        schedule=ScheduleSection(epochs=20, warmup_steps=100, kind="cosine"),
        checkpoint=CheckpointSection(every_steps=500, keep=2),
        output_dir="runs/small-data",
    )


def smoke() -> TrainConfig:
    # 20 epochs of 100 steps, cosine to 1% of lr 1e-3: 18.4 minutes and held-out AP50 0.78 (0.97 with the
    # text positions from 1, 15 CPU-minutes at one thread) on a
    # 2-core CPU (benchmarks/bench_smoke_train.py; a constant lr reached AP50 0.36 in 20 minutes)
    return TrainConfig(
        model=ModelSection(preset="small-minilm", text_weights="minilm", freeze_text=True),
        data=DataSection(
            synthetic=400,
            synthetic_val=50,
            synthetic_size=128,
            batch_size=4,
            num_workers=0,
            image_size=128,
            crop_prob=0.0,
            max_classes=8,
        ),
        optim=OptimSection(lr=1e-3, backbone_lr_mult=1.0, text_lr_mult=0.1, grad_clip=0.1),
        schedule=ScheduleSection(epochs=20, warmup_steps=100, kind="cosine"),
        loss=LossSection(dn_number=20),
        checkpoint=CheckpointSection(every_steps=200, keep=2),
        eval=EvalSection(every_epochs=1),
        output_dir="runs/smoke",
        log_every=10,
    )


def smoke_general() -> TrainConfig:
    """The ``smoke`` model with a recipe tuned (on the ``textured`` variant) for other generators
    within 20 CPU-minutes at one thread (benchmarks/RESULTS.md, "Generalization": held-out AP50
    0.92 on ``shapes``, 0.78 on ``crowded``, 0.82 on ``textured``; goal 0.6):
    2000 images of ``data.synthetic_variant`` (each at the variant's own size), trained and
    evaluated at 192 px (at 128 px the small objects of ``textured``, 24-96 px of 256, got loose
    boxes: AP50 0.48 there), batch 2 instead of 4 (twice the steps for the same images: more
    updates per CPU-second were the tuning's gain), 2800 steps of cosine (about 17 CPU-minutes at
    0.36 CPU-s per step, so the decay ends inside the budget with room for a loaded machine)."""
    base = smoke()
    return replace(
        base,
        data=replace(base.data, synthetic=2000, synthetic_val=200, synthetic_size=0, batch_size=2, image_size=192),
        schedule=ScheduleSection(epochs=3, max_steps=2800, warmup_steps=100, kind="cosine"),
        checkpoint=CheckpointSection(every_steps=500, keep=1),
        eval=EvalSection(every_epochs=0),
        output_dir="runs/smoke-general",
    )


PRESETS = {"coco-finetune": coco_finetune, "small-data": small_data, "smoke": smoke, "smoke-general": smoke_general}


def get_train_preset(name: str) -> TrainConfig:
    """The named preset; unknown names raise a one-line error listing the choices."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise GdinoError(f"unknown training preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None


__all__ = ["PRESETS", "get_train_preset"]
