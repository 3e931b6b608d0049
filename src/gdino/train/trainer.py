"""The training loop: AMP, clipping, EMA, checkpoints, exact resume, DDP, validation, logs.

Exact resume: the batch order and each sample's augmentation are pure functions of the seed, epoch
and index (:mod:`gdino.train.data_order`), and a checkpoint holds every process's RNG states plus
the epoch and the number of batches consumed (:mod:`gdino.train.checkpointing`), so "N steps" and
"k steps, stop, resume, N - k steps" give the same parameters. Process groups:
:mod:`gdino.train.distributed`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from gdino.errors import GdinoError
from gdino.model.grounding_dino import GroundingDINO
from gdino.train.checkpointing import LoopState, averaged_model, export_weights, resume_run, save_run
from gdino.train.config import save_config
from gdino.train.criterion import LossWeights
from gdino.train.data_order import EpochBatches, SeededDataset
from gdino.train.denoising import DenoisingConfig
from gdino.train.distill import Distiller, DistillForward
from gdino.train.distributed import DistInfo, any_rank, barrier, init_distributed, seed_everything
from gdino.train.ema import ModelEMA
from gdino.train.forward import TrainForward
from gdino.train.optim import apply_freezing, build_optimizer, build_scheduler
from gdino.train.sections import TrainConfig

logger = logging.getLogger(__name__)


class TrainingDiverged(GdinoError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------- the loop
class Trainer:
    """Runs a :class:`TrainConfig` on a model, a dataset of ``(image, Target)`` and a criterion.

    Args:
        validate: ``fn(model) -> {metric: value}`` run on rank 0 after an epoch (or None).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: GroundingDINO,
        dataset: Any,
        collate_fn: Callable,
        criterion: Callable,
        validate: Callable[[nn.Module], dict[str, float]] | None = None,
        device: torch.device | str = "cpu",
        dist_info: DistInfo | None = None,
    ) -> None:
        self.cfg, self.criterion, self.validate = cfg, criterion, validate
        self.dist = dist_info or DistInfo()
        self.device = torch.device(device)
        self.out = Path(cfg.output_dir)
        self.model: GroundingDINO = model.to(self.device)
        loss = cfg.loss
        self.distiller = (
            Distiller(
                self.model,
                loss.distill_classes,
                loss.distill_weight,
                loss.distill_topk,
                getattr(criterion, "weights", LossWeights()),  # the criterion's recipe (SetCriterion)
                annotated=loss.distill_annotated,
            )
            if loss.distill_classes
            else None
        )
        apply_freezing(self.model, cfg.model)
        self.model.use_checkpoint = cfg.model.gradient_checkpointing
        self.dataset = SeededDataset(dataset, cfg.seed)
        self.collate_fn = collate_fn
        self.batches = EpochBatches(len(dataset), cfg.data.batch_size, cfg.seed, self.dist.rank, self.dist.world)
        self.steps_per_epoch = len(self.batches)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.steps_per_epoch)
        amp = cfg.optim.amp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.ema = ModelEMA(self.model, cfg.optim.ema_decay) if cfg.optim.ema else None
        dn = None
        if cfg.loss.denoising:
            eps = getattr(getattr(model, "config", None), "inverse_sigmoid_eps", 1e-3)
            dn = DenoisingConfig(
                cfg.loss.dn_number, cfg.loss.dn_label_noise, cfg.loss.dn_box_noise, eps, cfg.loss.dn_max_groups
            )
        self.forward_module: nn.Module = (
            TrainForward(self.model, dn)
            if self.distiller is None
            else DistillForward(self.model, dn, self.distiller.prompt)
        )
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_module = nn.parallel.DistributedDataParallel(self.forward_module, device_ids=ids)
        self.state = LoopState()
        self._stop = False
        self._writer: Any = None
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0 writes; every rank's RNG is kept)."""
        self.last_checkpoint = save_run(self)
        return self.last_checkpoint

    def resume(self, path: str | Path | None = None) -> bool:
        """Load the latest checkpoint of the run folder (or ``path``); False when there is none."""
        return resume_run(self, path)

    def export(self, path: str | Path) -> Path:
        """The trained weights (EMA ones when EMA is on) as a gdino safetensors file."""
        return export_weights(self, path)

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            try:  # optional: tensorboard is heavy and not needed to train
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                self._writer = False
                logger.warning("tensorboard is not installed: logging to log.jsonl only")
        if self._writer:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._writer.add_scalar(k, v, record["step"])
            self._writer.flush()

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Any) -> dict[str, float]:
        """Forward, loss, backward, clip, step; returns the loss terms (and the grad norm) as floats.

        Host syncs per step, whatever the batch size or layer count: one device-to-host copy of
        every layer's matching costs (scipy's Hungarian runs on the host) and one of the loss
        values with the grad norm (the NaN check, before the optimizer step); one all-reduce
        more in a multi-process job. Held by tests/test_train_syncs.py. Distillation
        (``loss.distill_classes``) adds one: the matching to the teacher's queries.
        """
        host_targets = batch.targets
        batch = batch.to(self.device, non_blocking=True)
        self.model.train()
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        with autocast:
            output, meta, text_len, *kept = self.forward_module(
                batch.pixel_values, batch.pixel_mask, batch.captions, host_targets
            )
        losses = self.criterion(output, batch.targets, meta, text_len=text_len)
        if self.distiller is not None:  # one more host sync: the matching to the teacher's queries
            losses = self.distiller.add_to(losses, kept[0], batch.pixel_values, batch.pixel_mask, batch.targets)
        loss = losses["total"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip) if self.cfg.optim.grad_clip > 0 else None
        names = list(losses)
        stats = [losses[k].detach().float() for k in names]
        if grad_norm is not None:
            names.append("grad_norm")
            stats.append(grad_norm.detach().float())
        values = torch.stack(stats).tolist()  # the one sync for the values
        total = values[names.index("total")]
        if any_rank(not math.isfinite(total), self.dist, self.device):
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingDiverged(
                f"loss is {total} at step {self.state.step + 1} (epoch {self.state.epoch}){where}; "
                "lower optim.lr, raise schedule.warmup_steps or use optim.amp=bf16"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return dict(zip(names, values))

    # ------------------------------------------------------------------ the loop
    def total_steps(self) -> int:
        s = self.cfg.schedule
        return s.max_steps if s.max_steps > 0 else s.epochs * self.steps_per_epoch

    def fit(self, resume: bool | str | Path = False, stop_after: int | None = None) -> LoopState:
        """Train to the end of the schedule (or until step ``stop_after``, saving there: an
        interruption, for tests). ``resume``: True = the run folder's latest checkpoint, or a path."""
        if resume:
            self.resume(None if resume is True else Path(resume))
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
        total = self.total_steps()
        every = self.cfg.checkpoint.every_steps
        bar = tqdm(
            total=total, initial=self.state.step, unit="step", disable=not (self.cfg.progress and self.dist.main)
        )
        sums: dict[str, float] = {}
        count, tick = 0, time.perf_counter()
        budget, started = self.cfg.schedule.max_minutes * 60.0, time.perf_counter()
        cpu_budget, cpu_started = self.cfg.schedule.max_cpu_minutes * 60.0, time.process_time()
        epochs_cap = self.cfg.schedule.epochs if self.cfg.schedule.max_steps <= 0 else 10**9
        stop = False
        while not stop and self.state.step < total and self.state.epoch < epochs_cap:
            self.batches.set_position(self.state.epoch, self.state.batch_in_epoch)
            self.dataset.epoch = self.state.epoch
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=self.batches,
                collate_fn=self.collate_fn,
                num_workers=self.cfg.data.num_workers,
                generator=torch.Generator().manual_seed(self.cfg.seed),
            )
            for batch in loader:
                terms = self.train_step(batch)
                self.state.step += 1
                self.state.batch_in_epoch += 1
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.3f}", epoch=self.state.epoch)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if self.state.step % max(1, self.cfg.log_every) == 0 or self.state.step == total:
                    now = time.perf_counter()
                    record = {"step": self.state.step, "epoch": self.state.epoch, "sec_per_step": (now - tick) / count}
                    record.update({k: v / count for k, v in sums.items()})
                    record.update(
                        {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
                    )
                    self._log(record)
                    sums, count, tick = {}, 0, now
                stop = self.state.step >= total or (stop_after is not None and self.state.step >= stop_after)
                if budget > 0 and time.perf_counter() - started >= budget:
                    logger.info("time budget of %.1f min used up at step %d", budget / 60, self.state.step)
                    stop = True
                if cpu_budget > 0 and time.process_time() - cpu_started >= cpu_budget:
                    logger.info("CPU budget of %.1f min used up at step %d", cpu_budget / 60, self.state.step)
                    stop = True
                if budget > 0 or cpu_budget > 0:  # every rank stops at the same step
                    stop = any_rank(stop, self.dist, self.device)
                self._stop = stop
                due = stop or (every > 0 and self.state.step % every == 0)
                if self.state.batch_in_epoch >= self.steps_per_epoch:
                    self._end_epoch(due)
                elif due:
                    self.save()
                if stop:
                    break
        bar.close()
        budgeted = budget > 0 or cpu_budget > 0
        if self.dist.main and (self.state.step >= total or (budgeted and stop and stop_after is None)):
            self.export(self.out / "model.safetensors")
        return self.state

    def _end_epoch(self, save: bool = False) -> None:
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        e = self.cfg.eval.every_epochs
        last = self.state.step >= self.total_steps()
        if self.validate is not None and e > 0 and (self.state.epoch % e == 0 or last):
            metrics = self.run_validation()
            if metrics is not None:
                self.state.history.append({"epoch": self.state.epoch, "step": self.state.step, **metrics})
        every = self.cfg.checkpoint.every_epochs
        if save or last or (every > 0 and self.state.epoch % every == 0):
            self.save()

    def run_validation(self) -> dict[str, float] | None:
        """``validate`` on rank 0 (EMA weights when EMA is on), RNG untouched; logs ``val_*``."""
        metrics = None
        if self.dist.main and self.validate is not None:
            model = averaged_model(self)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                metrics = dict(self.validate(model))
            self.model.train()
            self._log(
                {"step": self.state.step, "epoch": self.state.epoch, **{f"val_{k}": v for k, v in metrics.items()}}
            )
            logger.info("epoch %d validation: %s", self.state.epoch, metrics)
        barrier(self.dist)
        return metrics


def close_writer(trainer: Trainer) -> None:
    """Flush and close the TensorBoard writer, if one was opened."""
    if trainer._writer:
        trainer._writer.close()


__all__ = [
    "DistInfo",
    "EpochBatches",
    "LoopState",
    "SeededDataset",
    "TrainForward",
    "Trainer",
    "TrainingDiverged",
    "close_writer",
    "init_distributed",
    "seed_everything",
]
