"""Checkpoint formats: official .pth, HF folder, gdino .safetensors, hub names; strict mapping;
round trips; bad input. All on the tiny preset (random weights, made here)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from gdino.cli import main as cli_main
from gdino.config import get_preset
from gdino.errors import CheckpointError
from gdino.model.backbone import relative_position_index
from gdino.weights import official
from gdino.weights.load import (
    _infer_config,
    convert,
    guess_format,
    load_model,
    save_hf,
    save_model,
    save_official,
)

DERIVED = re.compile(r"relative_position_index$")


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not DERIVED.search(k)}


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.fixture()
def no_cached_tokenizer(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so no bert-base-uncased vocab can be found there."""
    cache = tmp_path / "empty-hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def official_pth(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("official") / "tiny.pth"
    save_official(tiny_model, path)
    return path


# ---------------------------------------------------------------------------------------- formats


def test_gdino_safetensors_round_trip(tiny_model, tiny_checkpoint, no_cached_tokenizer):
    model = load_model(tiny_checkpoint)
    _assert_same_weights(model, tiny_model)
    assert model.config == tiny_model.config
    assert not model.training
    # the vocabulary travels in the file's metadata: same ids with no other tokenizer around
    caption = "a cat . a remote control ."
    assert model.tokenizer(caption)["input_ids"] == tiny_model.tokenizer(caption)["input_ids"]
    assert model.tokenizer(caption)["input_ids"] == [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]


def test_official_layout_matches_the_released_key_families(tiny_model, official_pth):
    obj = torch.load(official_pth, map_location="cpu", weights_only=True)
    sd = obj["model"]
    cfg = tiny_model.config
    params = _params(tiny_model)
    head = [k for k in params if k.startswith("bbox_embed.")]
    blocks = sum(cfg.backbone.depths)
    assert len(head) == 6
    # every key once, the box head under bbox_embed.{i} and transformer.decoder.bbox_embed.{i}, + Swin index buffers
    assert len(sd) == len(params) - len(head) + 2 * cfg.dec_layers * len(head) + blocks
    for key in (
        "backbone.0.patch_embed.proj.weight",
        "backbone.0.layers.2.blocks.1.attn.qkv.weight",
        "backbone.0.norm3.bias",
        "bert.pooler.dense.weight",
        "transformer.encoder.text_layers.1.self_attn.in_proj_weight",
        "transformer.encoder.fusion_layers.0.gamma_v",
        "transformer.decoder.layers.1.ca_text.in_proj_bias",
        "transformer.decoder.bbox_embed.1.layers.2.weight",
        "bbox_embed.0.layers.0.bias",
        "transformer.tgt_embed.weight",
    ):
        assert key in sd, key
    assert not any(k.startswith("backbone.layers") for k in sd)
    for n in range(cfg.dec_layers):
        assert torch.equal(
            sd[f"transformer.decoder.bbox_embed.{n}.layers.2.weight"], params["bbox_embed.layers.2.weight"]
        )
    # the saved Swin index (computed in gdino.weights.official) equals the model's own buffer
    own = tiny_model.state_dict()
    for s, depth in enumerate(cfg.backbone.depths):
        for b in range(depth):
            saved = sd[f"backbone.0.layers.{s}.blocks.{b}.attn.relative_position_index"]
            assert torch.equal(saved, relative_position_index(cfg.backbone.window_size))
            if f"backbone.layers.{s}.blocks.{b}.attn.relative_position_index" in own:
                assert torch.equal(saved, own[f"backbone.layers.{s}.blocks.{b}.attn.relative_position_index"])
    assert obj["config"] == cfg.to_dict()


def test_official_pth_loads_exactly(tiny_model, official_pth, vocab_dir):
    model = load_model(official_pth, tokenizer=vocab_dir)
    _assert_same_weights(model, tiny_model)
    assert model.config == tiny_model.config


def test_official_bare_state_dict_with_module_prefix_and_inferred_preset(tiny_model, official_pth, vocab_dir, tmp_path):
    sd = torch.load(official_pth, map_location="cpu", weights_only=True)["model"]
    sd = {f"module.{k}": v for k, v in sd.items()}
    sd["module.label_enc.weight"] = torch.zeros(2001, 64)  # known leftovers of the released files
    sd["module.bert.embeddings.position_ids"] = torch.arange(512)[None]
    path = tmp_path / "bare.pth"
    torch.save(sd, path)
    model = load_model(path, tokenizer=vocab_dir)  # no config in the file: "tiny" found from the shapes
    assert model.config == tiny_model.config
    _assert_same_weights(model, tiny_model)


def test_gdino_named_pth_as_training_code_writes_it(tiny_model, tmp_path, vocab_dir):
    path = tmp_path / "step_100.pth"
    optimizer = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4}]}
    torch.save({"model": tiny_model.state_dict(), "config": tiny_model.config.to_dict(), "optimizer": optimizer}, path)
    model = load_model(path, tokenizer=vocab_dir)
    _assert_same_weights(model, tiny_model)
    torch.save({"model": {f"module.{k}": v for k, v in tiny_model.state_dict().items()}}, path)  # DDP, no config
    assert load_model(path, tokenizer=vocab_dir).config == tiny_model.config


def test_preset_inferred_from_swin_width():
    for embed, name in ((96, "swin-t"), (128, "swin-b")):
        state = {
            "backbone.0.patch_embed.proj.weight": torch.zeros(embed, 3, 4, 4),
            "bert.pooler.dense.weight": torch.zeros(1),
        }
        assert _infer_config(state, "x.pth", False) == get_preset(name)
    no_pooler = _infer_config({"backbone.0.patch_embed.proj.weight": torch.zeros(96, 3, 4, 4)}, "x.pth", False)
    assert no_pooler.text.with_pooler is False and no_pooler.backbone == get_preset("swin-t").backbone
    with pytest.raises(CheckpointError) as err:
        _infer_config({"backbone.0.patch_embed.proj.weight": torch.zeros(40, 3, 4, 4)}, "x.pth", False)
    _one_line(err, "x.pth", "embed dim 40", "config=")


def test_round_trip_official_hf_gdino_official(tiny_model, official_pth, tmp_path, vocab_dir):
    """a -> b -> c -> a through the CLI: every tensor and the config come back unchanged."""
    hf_dir, native_path, back = tmp_path / "hf", tmp_path / "tiny.safetensors", tmp_path / "back.pth"
    import shutil

    shutil.copy(vocab_dir / "vocab.txt", official_pth.parent / "vocab.txt")  # tokenizer beside the .pth
    assert cli_main(["convert", str(official_pth), str(hf_dir)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf_dir.iterdir()}
    assert cli_main(["convert", str(hf_dir), str(native_path)]) == 0
    assert cli_main(["convert", str(native_path), str(back)]) == 0
    a = torch.load(official_pth, map_location="cpu", weights_only=True)
    b = torch.load(back, map_location="cpu", weights_only=True)
    assert a["config"] == b["config"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    model = load_model(hf_dir)
    _assert_same_weights(model, tiny_model)
    _assert_same_weights(load_model(hf_dir / "model.safetensors"), tiny_model)  # the file inside works too
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_hf_folder_layout(tiny_model, tmp_path):
    save_hf(tiny_model, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("model.encoder.layers.1.text_enhancer_layer.self_attn.key.weight")
        qkv = f.get_tensor("model.backbone.conv_encoder.model.encoder.layers.2.blocks.1.attention.self.value.bias")
    params = _params(tiny_model)
    d = tiny_model.config.hidden_dim
    assert torch.equal(q, params["transformer.encoder.text_layers.1.self_attn.in_proj_weight"][d : 2 * d])
    c = 4 * tiny_model.config.backbone.embed_dim
    assert torch.equal(qkv, params["backbone.layers.2.blocks.1.attn.qkv.bias"][2 * c :])
    assert "bbox_embed.0.layers.2.weight" in keys and "model.decoder.bbox_embed.0.layers.2.weight" not in keys
    assert "model.encoder.layers.0.fusion_layer.vision_param" in keys
    assert "model.backbone.conv_encoder.model.hidden_states_norms.stage4.weight" in keys
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "grounding-dino" and cfg["backbone_config"]["out_indices"] == [2, 3, 4]


def test_dtype_device_and_config_override(tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu", dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    with pytest.raises(CheckpointError) as err:
        load_model(tiny_checkpoint, config="swin-t")
    _one_line(err, str(tiny_checkpoint), "shape mismatch")


# ---------------------------------------------------------------------------------------- strictness


def _official_dict(official_pth):
    return torch.load(official_pth, map_location="cpu", weights_only=True)


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda sd: sd.pop("transformer.decoder.norm.weight"), ["missing 1", "transformer.decoder.norm.weight"]),
        (
            lambda sd: sd.__setitem__("transformer.extra.weight", torch.zeros(3)),
            ["unexpected 1", "transformer.extra.weight"],
        ),
        (lambda sd: sd.__setitem__("feat_map.bias", torch.zeros(65)), ["shape mismatch", "feat_map.bias (65,)"]),
        (
            lambda sd: sd.__setitem__("transformer.decoder.bbox_embed.1.layers.0.bias", torch.ones(64)),
            ["transformer.decoder.bbox_embed.1.layers.0.bias", "shared box head"],
        ),
    ],
)
def test_strict_mapping_errors(official_pth, tmp_path, vocab_dir, edit, needles):
    obj = _official_dict(official_pth)
    edit(obj["model"])
    path = tmp_path / "edited.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path, tokenizer=vocab_dir)
    _one_line(err, str(path), *needles)


def test_gdino_file_is_strict_too(tiny_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m.safetensors"
    save_model(tiny_model, path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    sd["label_enc.weight"] = torch.zeros(3)  # allowed in official files only
    save_file(sd, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    _one_line(err, str(path), "unexpected 1", "label_enc.weight")


# ---------------------------------------------------------------------------------------- bad input


def test_pickle_carrying_code_is_refused(tmp_path, vocab_dir):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    zipped, legacy = tmp_path / "evil.pth", tmp_path / "evil_legacy.pth"
    torch.save({"model": {"x": Payload()}}, zipped)
    with legacy.open("wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)
    for path in (zipped, legacy):
        with pytest.raises(CheckpointError) as err:
            load_model(path, tokenizer=vocab_dir)
        _one_line(err, str(path), "refusing to load", ".system")
    assert not marker.exists()


def test_training_args_namespace_is_accepted(official_pth, tmp_path, vocab_dir, tiny_model):
    import argparse

    obj = _official_dict(official_pth)
    obj["args"] = argparse.Namespace(lr=1e-4, backbone="swin_T_224_1k")  # what training scripts add
    obj["epoch"] = 11
    path = tmp_path / "with_args.pth"
    torch.save(obj, path)
    _assert_same_weights(load_model(path, tokenizer=vocab_dir), tiny_model)


def test_truncated_files(official_pth, tiny_checkpoint, tmp_path, vocab_dir):
    for src, name in ((official_pth, "cut.pth"), (tiny_checkpoint, "cut.safetensors")):
        data = src.read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError) as err:
            load_model(path, tokenizer=vocab_dir)
        _one_line(err, str(path), "truncated")


def test_other_architectures(tmp_path, vocab_dir):
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    path = tmp_path / "resnet.pth"
    torch.save({"model": resnet}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path, tokenizer=vocab_dir)
    _one_line(err, str(path), "not a Grounding DINO")
    folder = tmp_path / "detr"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "detr"}))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(folder)
    _one_line(err, str(folder), "'detr'", "not grounding-dino")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(CheckpointError) as err:
        load_model(plain)
    _one_line(err, str(plain), "without a gdino config")


def test_missing_things(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "grounding-dino"}))
    cases = [
        (empty, [str(empty), "no weights"]),
        (tmp_path, [str(tmp_path), "no config.json", "config.json"]),
        (tmp_path / "nope.pth", ["checkpoint not found", "nope.pth"]),
        ("grounding-dino-large", ["unknown weights", "grounding-dino-large", "grounding-dino-tiny"]),
    ]
    for weights, needles in cases:
        with pytest.raises(CheckpointError) as err:
            load_model(weights)
        _one_line(err, *needles)


def test_no_tokenizer_anywhere(tiny_model, tmp_path, no_cached_tokenizer):
    path = tmp_path / "notok" / "m.safetensors"
    with pytest.raises(CheckpointError) as err:
        load_model(_save_without_tokenizer(tiny_model, path))
    _one_line(err, "no tokenizer", str(path), "vocab.txt")


def _save_without_tokenizer(model, path: Path) -> Path:
    tok, model.tokenizer = model.tokenizer, None
    try:
        save_model(model, path)
    finally:
        model.tokenizer = tok
    return path


def test_tokenizer_found_beside_the_weights(tiny_model, tmp_path, vocab_dir, no_cached_tokenizer):
    import shutil

    path = _save_without_tokenizer(tiny_model, tmp_path / "m.safetensors")
    shutil.copy(vocab_dir / "vocab.txt", tmp_path / "vocab.txt")
    model = load_model(path)
    assert model.tokenizer("a cat .")["input_ids"] == [101, 1037, 4937, 1012, 102]


def test_cli_errors_exit_2(tmp_path, capsys):
    assert cli_main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "missing.pth" in err and err.count("\n") == 1


def test_guess_format(tmp_path):
    assert guess_format("x.pth") == "official"
    assert guess_format("x.safetensors") == "gdino"
    assert guess_format(tmp_path) == "hf"
    assert guess_format(tmp_path / "new_folder") == "hf"
    with pytest.raises(Exception, match="--format"):
        guess_format("x.onnx")


def test_save_is_atomic(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("gdino.weights.native.save_file", boom)
    with pytest.raises(OSError):
        save_model(tiny_model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


# ---------------------------------------------------------------------------------------- hub names


def _fake_hub_cache(cache: Path, repo: str, model) -> Path:
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    save_hf(model, snapshot)
    (snapshot.parent.parent / "refs").mkdir(parents=True)
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_hub_name_offline_from_cache(tiny_model, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "IDEA-Research/grounding-dino-tiny", tiny_model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = load_model("grounding-dino-tiny")
    params = _params(tiny_model)
    loaded = _params(model)
    assert all(torch.equal(loaded[k], params[k]) for k in params if not k.startswith("bert.pooler"))
    assert model.tokenizer("a cat .")["input_ids"] == [101, 1037, 4937, 1012, 102]


def test_hub_name_offline_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing"))
    with pytest.raises(CheckpointError) as err:
        load_model("grounding-dino-base")
    _one_line(
        err,
        "IDEA-Research/grounding-dino-base",
        str(tmp_path / "nothing"),
        "hf download IDEA-Research/grounding-dino-base",
    )


@pytest.mark.parametrize("fmt", ["official", "hf"])
def test_routes_use_every_source_key_once(tiny_model, fmt):
    from gdino.weights import hf

    params = _params(tiny_model)
    module = official if fmt == "official" else hf
    sources = [k for r in module.routes(list(params), tiny_model.config).values() for k in r.keys]
    assert len(sources) == len(set(sources))


def test_convert_with_explicit_format(tiny_checkpoint, tmp_path):
    out = tmp_path / "as_official.bin"
    assert convert(tiny_checkpoint, out, "official") == "official"
    assert "model" in torch.load(out, map_location="cpu", weights_only=True)


def test_hf_config_translation():
    from gdino.weights.hf_config import config_from_hf, config_to_hf

    for name in ("swin-t", "swin-b", "tiny"):
        preset = get_preset(name)
        assert config_from_hf(config_to_hf(preset), "x", with_pooler=preset.text.with_pooler) == preset
    # a minimal config (sub-configs at their defaults) is the Swin-T / bert-base-uncased model
    minimal = config_from_hf({"model_type": "grounding-dino"}, "x")
    swin_t = get_preset("swin-t")
    assert minimal.backbone.embed_dim == 96 and minimal.backbone.depths == swin_t.backbone.depths
    assert minimal.text == dataclasses.replace(swin_t.text, with_pooler=False)
    assert (minimal.num_queries, minimal.hidden_dim, minimal.inverse_sigmoid_eps) == (900, 256, 1e-3)
    for bad, needle in (
        ({"two_stage": False}, "two_stage=False"),
        ({"text_config": {"model_type": "roberta"}}, "text encoder roberta"),
        ({"use_timm_backbone": True}, "timm"),
        ({"encoder_attention_heads": 8, "decoder_attention_heads": 4}, "encoder_attention_heads"),
    ):
        with pytest.raises(CheckpointError) as err:
            config_from_hf({"model_type": "grounding-dino", **bad}, "cfg.json")
        _one_line(err, "cfg.json", "unsupported", needle)
