"""The training loop: AMP, clipping, EMA, atomic checkpoints, exact resume, DDP, validation, logs.

Exact resume: the batch order of an epoch is a pure function of ``(seed, epoch, rank)``, each
sample's augmentation of ``(seed, epoch, index)`` (:class:`SeededDataset`), and the checkpoint
holds every process's RNG states plus the epoch and the number of batches consumed, so
"N steps" and "k steps, stop, resume, N - k steps" give the same parameters.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch import distributed as dist

from gdino.errors import GdinoError
from gdino.train import checkpoint as ckpt
from gdino.train.config import TrainConfig
from gdino.train.ema import ModelEMA
from gdino.train.optim import apply_freezing, build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


class TrainingDiverged(GdinoError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------- data order
class EpochBatches:
    """Batch sampler: a seeded permutation per epoch, split across ranks, resumable mid-epoch.

    Like ``DistributedSampler`` (indices padded by wrapping so every rank gets the same count),
    then cut into batches (the last partial batch is dropped when a rank has at least one full one).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        if n <= 0:
            raise GdinoError("the training dataset is empty")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start`` on."""
        self.epoch, self.start = epoch, start

    def epoch_indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        per_rank = math.ceil(self.n / self.world)
        order = (order * math.ceil(per_rank * self.world / self.n))[: per_rank * self.world]
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        per_rank = math.ceil(self.n / self.world)
        return max(1, per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.epoch_indices()
        for b in range(self.start, len(self)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that item ``i`` of epoch ``e`` is drawn with the RNGs seeded from
    ``(seed, e, i)``, whatever process or worker loads it; the caller's RNG states are untouched."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self._epoch = dataset, seed, 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = int(value)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self._epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        s = (self.seed * 1000003 + self.epoch) * 1000003 + int(index)
        py, npy = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                random.seed(s)
                np.random.seed(s % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(npy)


# ---------------------------------------------------------------------------------------- forward
class TrainForward(nn.Module):
    """The training forward as one module (so DDP sees it): text, image, denoising, decoder."""

    def __init__(self, model: nn.Module, denoising: Any = None) -> None:
        super().__init__()
        self.model = model
        self.denoising = denoising  # a gdino.train.denoising.DenoisingConfig, or None for off

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor, captions: list[str], targets: list) -> tuple[Any, Any]:
        m = self.model
        text_features = m.encode_text(m.tokenize(captions))
        image_features = m.encode_image(pixel_values, pixel_mask)
        dn = meta = None
        if self.denoising is not None:
            from gdino.train.denoising import build_denoising

            built = build_denoising(targets, text_features, m.config.num_queries, self.denoising)
            if built is not None:
                dn, meta = built
        return m.forward_features(image_features, text_features, dn), meta


# ---------------------------------------------------------------------------------------- the loop
@dataclass
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class LoopState:
    """Where the loop is: optimizer steps done, current epoch, batches of it consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Runs a :class:`TrainConfig` on a model, a dataset of ``(image, Target)`` and a criterion.

    Args:
        validate: ``fn(model) -> {metric: value}`` run on rank 0 after an epoch (or None).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
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
        self.model = model.to(self.device)
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
            from gdino.train.denoising import DenoisingConfig

            eps = getattr(getattr(model, "config", None), "inverse_sigmoid_eps", 1e-3)
            dn = DenoisingConfig(cfg.loss.dn_number, cfg.loss.dn_label_noise, cfg.loss.dn_box_noise, eps)
        self.forward_module: nn.Module = TrainForward(self.model, dn)
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_module = nn.parallel.DistributedDataParallel(self.forward_module, device_ids=ids)
        self.state = LoopState()
        self._stop = False
        self._writer: Any = None
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ checkpoints
    def _model_metadata(self) -> dict[str, str]:
        config = getattr(self.model, "config", None)
        return ckpt.model_metadata(config.to_dict() if hasattr(config, "to_dict") else {})

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0 writes; every rank's RNG is kept)."""
        rng = ckpt.capture_rng()
        if self.dist.world > 1:
            gathered: list[Any] = [None] * self.dist.world
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        path = None
        if self.dist.main:
            state = {
                "step": self.state.step,
                "epoch": self.state.epoch,
                "batch_in_epoch": self.state.batch_in_epoch,
                "history": self.state.history,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": {k: v for k, v in self.ema.state_dict().items() if k != "shadow"} if self.ema else None,
                "rng": rng_all,
                "world_size": self.dist.world,
                "train_config": self.cfg.to_dict(),
            }
            path = ckpt.save_checkpoint(
                self.out / "checkpoints", self.state.step, self.model.state_dict(), state,
                self._model_metadata(), self.ema.shadow if self.ema else None, self.cfg.checkpoint.keep,
                self._model_writer(),
            )
            logger.info("checkpoint %s", path)
        if self.dist.world > 1:
            dist.barrier()
        self.last_checkpoint = path
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Load the latest checkpoint of the run folder (or ``path``); False when there is none."""
        where = Path(path) if path is not None else self.out
        if ckpt.find_checkpoint(where) is None:
            if path is not None:
                raise GdinoError(f"no training checkpoint found in {path}")
            return False
        model_state, ema_state, state = ckpt.load_checkpoint(where)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if ema_state is None or state.get("ema") is None:
                raise GdinoError("the checkpoint has no EMA weights but optim.ema is on")
            self.ema.load_state_dict({**state["ema"], "shadow": ema_state})
        rngs = state["rng"]
        if len(rngs) != self.dist.world:
            logger.warning("resuming a %d-process run with %d processes: data order and RNG change", len(rngs), self.dist.world)
        ckpt.restore_rng(rngs[self.dist.rank % len(rngs)])
        self.state = LoopState(state["step"], state["epoch"], state["batch_in_epoch"], list(state.get("history", [])))
        logger.info("resumed from step %d (epoch %d, batch %d)", self.state.step, self.state.epoch, self.state.batch_in_epoch)
        return True

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            try:
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
        """Forward, loss, backward, clip, step; returns the loss terms as floats."""
        batch = batch.to(self.device)
        self.model.train()
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        with autocast:
            output, meta = self.forward_module(batch.pixel_values, batch.pixel_mask, batch.captions, batch.targets)
        losses = self.criterion(output, batch.targets, meta)
        loss = losses["total"]
        bad = torch.tensor(float(not torch.isfinite(loss)), device=self.device)
        if self.dist.world > 1:
            dist.all_reduce(bad)
        if bad.item() > 0:
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingDiverged(
                f"loss is {loss.item()} at step {self.state.step + 1} (epoch {self.state.epoch}){where}; "
                "lower optim.lr, raise schedule.warmup_steps or use optim.amp=bf16"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip) if self.cfg.optim.grad_clip > 0 else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        out = {k: float(v.detach()) for k, v in losses.items()}
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
        return out

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
            from gdino.train.config import save_config

            save_config(self.cfg, self.out / "config.yaml")
        total = self.total_steps()
        every = self.cfg.checkpoint.every_steps
        from tqdm import tqdm

        bar = tqdm(total=total, initial=self.state.step, unit="step", disable=not (self.cfg.progress and self.dist.main))
        sums: dict[str, float] = {}
        count, tick = 0, time.perf_counter()
        budget, started = self.cfg.schedule.max_minutes * 60.0, time.perf_counter()
        epochs_cap = self.cfg.schedule.epochs if self.cfg.schedule.max_steps <= 0 else 10**9
        stop = False
        while not stop and self.state.step < total and self.state.epoch < epochs_cap:
            self.batches.set_position(self.state.epoch, self.state.batch_in_epoch)
            self.dataset.epoch = self.state.epoch
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.batches, collate_fn=self.collate_fn,
                num_workers=self.cfg.data.num_workers, generator=torch.Generator().manual_seed(self.cfg.seed),
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
                    record.update({f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)})
                    self._log(record)
                    sums, count, tick = {}, 0, now
                stop = self.state.step >= total or (stop_after is not None and self.state.step >= stop_after)
                if budget > 0 and time.perf_counter() - started >= budget:
                    logger.info("time budget of %.1f min used up at step %d", budget / 60, self.state.step)
                    stop = True
                if budget > 0 and self.dist.world > 1:  # every rank stops at the same step
                    flag = torch.tensor(float(stop), device=self.device)
                    dist.all_reduce(flag)
                    stop = bool(flag.item() > 0)
                self._stop = stop
                due = stop or (every > 0 and self.state.step % every == 0)
                if self.state.batch_in_epoch >= self.steps_per_epoch:
                    self._end_epoch(due)
                elif due:
                    self.save()
                if stop:
                    break
        bar.close()
        if self.dist.main and (self.state.step >= total or (budget > 0 and stop and stop_after is None)):
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
            model = self.model
            if self.ema is not None:
                import copy

                model = copy.deepcopy(self.model)
                self.ema.copy_to(model)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                metrics = dict(self.validate(model))
            self.model.train()
            self._log({"step": self.state.step, "epoch": self.state.epoch, **{f"val_{k}": v for k, v in metrics.items()}})
            logger.info("epoch %d validation: %s", self.state.epoch, metrics)
        if self.dist.world > 1:
            dist.barrier()
        return metrics

    def _model_writer(self) -> Callable[[dict[str, Tensor], Path], None] | None:
        """gdino's own weight-file writer (config and vocabulary in the metadata) for a GroundingDINO."""
        config = getattr(self.model, "config", None)
        if not hasattr(config, "backbone"):
            return None
        from gdino.weights import native

        tokenizer = getattr(self.model, "tokenizer", None)
        return lambda state, path: native.write(state, config, path, tokenizer)

    def export(self, path: str | Path) -> Path:
        """The trained weights (EMA ones when EMA is on) as a gdino safetensors file
        (``gdino.load_model`` / ``gdino detect --weights`` read it)."""
        from safetensors.torch import save_file

        path = Path(path)
        if self._model_writer() is not None:
            import copy

            from gdino.weights.load import save_model

            model = self.model
            if self.ema is not None:
                model = copy.deepcopy(self.model)
                self.ema.copy_to(model)
            save_model(model, path)
            return path
        weights = self.ema.shadow if self.ema is not None else self.model.state_dict()
        own = self.model.state_dict()
        tensors = {k: v.detach().to(own[k].dtype).contiguous().cpu() for k, v in weights.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=self._model_metadata())
        tmp.replace(path)
        return path


def close_writer(trainer: Trainer) -> None:
    """Flush and close the TensorBoard writer, if one was opened."""
    if trainer._writer:
        trainer._writer.close()


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun job described by the environment (if any) and pick this rank's device."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), dev


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch, Python and NumPy (each rank differently)."""
    s = seed + 7919 * rank
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


__all__: Sequence[str] = (
    "EpochBatches", "SeededDataset", "TrainForward", "Trainer", "TrainingDiverged", "DistInfo", "LoopState",
    "init_distributed", "seed_everything", "close_writer",
)
