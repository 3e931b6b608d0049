"""A trainer's checkpoints: saving and restoring the whole loop state, exporting the trained weights.

The file format (atomic folders, safetensors weights, ``weights_only`` state) is
:mod:`gdino.train.checkpoint`; this module decides what goes into it: model, EMA, optimizer,
scheduler, AMP scaler, every rank's RNG states and the data position.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from gdino.errors import GdinoError
from gdino.model.grounding_dino import GroundingDINO
from gdino.train import checkpoint as ckpt
from gdino.train.distributed import barrier, gather_objects
from gdino.weights import native
from gdino.weights.load import save_model

if TYPE_CHECKING:  # type hints only: the trainer imports this module
    from gdino.train.trainer import Trainer

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where the loop is: optimizer steps done, current epoch, batches of it consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict] = field(default_factory=list)


def model_metadata(model: GroundingDINO) -> dict[str, str]:
    return ckpt.model_metadata(model.config.to_dict())


def model_writer(model: GroundingDINO) -> Callable[[dict[str, Tensor], Path], None]:
    """gdino's own weight-file writer (config and vocabulary in the metadata)."""
    config, tokenizer = model.config, model.tokenizer
    return lambda state, path: native.write(state, config, path, tokenizer)


def save_run(t: Trainer) -> Path | None:
    """Write a checkpoint of ``t``'s current state (rank 0 writes; every rank's RNG is kept)."""
    rng_all = gather_objects(ckpt.capture_rng(), t.dist)
    path = None
    if t.dist.main:
        state = {
            "step": t.state.step,
            "epoch": t.state.epoch,
            "batch_in_epoch": t.state.batch_in_epoch,
            "history": t.state.history,
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict(),
            "ema": {k: v for k, v in t.ema.state_dict().items() if k != "shadow"} if t.ema else None,
            "rng": rng_all,
            "world_size": t.dist.world,
            "train_config": t.cfg.to_dict(),
        }
        path = ckpt.save_checkpoint(
            t.out / "checkpoints",
            t.state.step,
            t.model.state_dict(),
            state,
            model_metadata(t.model),
            t.ema.shadow if t.ema else None,
            t.cfg.checkpoint.keep,
            model_writer(t.model),
        )
        logger.info("checkpoint %s", path)
    barrier(t.dist)
    return path


def resume_run(t: Trainer, path: str | Path | None = None) -> bool:
    """Load the latest checkpoint of ``t``'s run folder (or ``path``) into it; False when there is none."""
    where = Path(path) if path is not None else t.out
    if ckpt.find_checkpoint(where) is None:
        if path is not None:
            raise GdinoError(f"no training checkpoint found in {path}")
        return False
    model_state, ema_state, state = ckpt.load_checkpoint(where)
    t.model.load_state_dict(model_state)
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.scaler.load_state_dict(state["scaler"])
    if t.ema is not None:
        if ema_state is None or state.get("ema") is None:
            raise GdinoError("the checkpoint has no EMA weights but optim.ema is on")
        t.ema.load_state_dict({**state["ema"], "shadow": ema_state})
    rngs = state["rng"]
    if len(rngs) != t.dist.world:
        logger.warning(
            "resuming a %d-process run with %d processes: data order and RNG change", len(rngs), t.dist.world
        )
    ckpt.restore_rng(rngs[t.dist.rank % len(rngs)])
    t.state = LoopState(state["step"], state["epoch"], state["batch_in_epoch"], list(state.get("history", [])))
    logger.info("resumed from step %d (epoch %d, batch %d)", t.state.step, t.state.epoch, t.state.batch_in_epoch)
    return True


def averaged_model(t: Trainer) -> GroundingDINO:
    """The model with the EMA weights when EMA is on (a copy), else the model itself."""
    if t.ema is None:
        return t.model
    model = copy.deepcopy(t.model)
    t.ema.copy_to(model)
    return model


def export_weights(t: Trainer, path: str | Path) -> Path:
    """The trained weights (EMA ones when EMA is on) as a gdino safetensors file
    (``gdino.load_model`` / ``gdino detect --weights`` read it)."""
    path = Path(path)
    save_model(averaged_model(t), path)
    return path


__all__ = ["LoopState", "averaged_model", "export_weights", "model_metadata", "model_writer", "resume_run", "save_run"]
