"""Parity with transformers' GroundingDinoForObjectDetection on the same (random) weights.

A tiny HF model shaped like gdino's ``tiny`` preset gets every parameter randomized at a realistic
scale (fusion gammas ~0.5), is saved with ``save_pretrained`` and loaded through gdino's HF-folder
path. transformers uses ``logit(eps=1e-5)`` where the official code (and gdino by default) uses
``inverse_sigmoid(eps=1e-3)``; the strict comparison is made with gdino set to eps 1e-5, and the
default model is checked to differ from it only on saturated boxes.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
from conftest import randomize_

transformers = pytest.importorskip("transformers")

from gdino.weights.load import load_model, save_hf  # noqa: E402

CAPTIONS = ["a cat . a remote control .", "dog . the green traffic light . frisbee ."]
BOX_TOL = 1e-4
LOGIT_TOL = 1e-3


def _hf_tiny_config():
    """transformers config with the shapes of gdino's ``tiny`` preset."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = SwinConfig(
        embed_dim=32,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        window_size=7,
        out_indices=[2, 3, 4],
        out_features=["stage2", "stage3", "stage4"],
    )
    bert = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    return GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        num_queries=50,
        encoder_layers=2,
        decoder_layers=2,
        d_model=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    )


@pytest.fixture(scope="module")
def hf_model():
    from transformers import GroundingDinoForObjectDetection

    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(_hf_tiny_config()).eval()
    randomize_(model, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("vision_param", "text_param")):  # HF's names of gamma_v / gamma_l
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=gen))
            elif re.search(r"input_proj_vision\.\d+\.1\.weight$", name):  # GroupNorm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def hf_folder(hf_model, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "grounding-dino-tiny-random"
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def gdino_models(hf_folder):
    model = load_model(hf_folder)
    strict = load_model(hf_folder, config=dataclasses.replace(model.config, inverse_sigmoid_eps=1e-5))
    return model, strict


def _inputs(seed: int, padded: bool):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, 192, 256, generator=gen)
    mask = torch.ones(1, 192, 256, dtype=torch.long)
    if padded:  # a 150x215 image on a 192x256 canvas
        pixels[:, :, 150:] = 0
        pixels[:, :, :, 215:] = 0
        mask[:, 150:] = 0
        mask[:, :, 215:] = 0
    return pixels, mask


def _run_both(hf_model, model, caption, pixels, mask):
    text = model.tokenize([caption])
    with torch.no_grad():
        ours = model(pixels, text, pixel_mask=mask.bool())
        theirs = hf_model(
            pixel_values=pixels,
            pixel_mask=mask,
            input_ids=text.input_ids,
            attention_mask=text.attention_mask.long(),
            token_type_ids=text.token_type_ids,
        )
    return ours, theirs


def test_loaded_config_and_tokenizer(gdino_models, hf_model):
    model, _ = gdino_models
    cfg = model.config
    assert (cfg.hidden_dim, cfg.num_queries, cfg.enc_layers, cfg.dec_layers, cfg.nheads) == (64, 50, 2, 2, 4)
    assert cfg.backbone.depths == (1, 1, 2, 1) and cfg.backbone.out_indices == (1, 2, 3)
    assert cfg.inverse_sigmoid_eps == 1e-3  # the official value, whatever transformers uses
    assert model.tokenizer("a cat .")["input_ids"] == [101, 1037, 4937, 1012, 102]
    # every HF tensor reached gdino, except transformers 5's unused final Swin LayerNorm
    gdino_n = sum(p.numel() for p in model.parameters())
    hf_n = sum(p.numel() for n, p in hf_model.named_parameters() if not re.search(r"\.swin\.layernorm\.", n))
    assert gdino_n == hf_n


@pytest.mark.parametrize("caption", CAPTIONS)
@pytest.mark.parametrize("padded", [False, True])
def test_matches_transformers_with_same_eps(hf_model, gdino_models, caption, padded):
    _, strict = gdino_models
    pixels, mask = _inputs(3, padded)
    ours, theirs = _run_both(hf_model, strict, caption, pixels, mask)
    valid = ours.text_mask[0]
    assert int(valid.sum()) == len(strict.tokenizer(caption)["input_ids"])
    assert torch.isinf(ours.logits[0][:, ~valid]).all() and (ours.logits[0][:, ~valid] < 0).all()
    box_err = (ours.boxes - theirs.pred_boxes).abs().max().item()
    logit_err = (ours.logits[0][:, valid] - theirs.logits[0][:, valid]).abs().max().item()
    assert box_err < BOX_TOL, box_err
    assert logit_err < LOGIT_TOL, logit_err
    # the values are not trivially small: logits span several units, boxes the unit square
    assert theirs.logits[0][:, valid].std() > 0.5
    assert theirs.pred_boxes.std() > 0.05


def test_eps_is_the_only_difference(hf_model, gdino_models):
    """Unsaturated references: eps 1e-3 and 1e-5 agree exactly. Saturated ones (encoder proposals
    pushed to w, h ~ 1): transformers matches gdino with eps 1e-5 and differs from eps 1e-3."""
    model, strict = gdino_models
    pixels, mask = _inputs(4, False)
    text = model.tokenize([CAPTIONS[0]])
    with torch.no_grad():
        a = model(pixels, text, pixel_mask=mask.bool())
        b = strict(pixels, text, pixel_mask=mask.bool())
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.logits, b.logits)

    hf_sat, model_sat, strict_sat = (copy.deepcopy(m) for m in (hf_model, model, strict))
    with torch.no_grad():
        hf_sat.model.encoder_output_bbox_embed.layers[-1].bias[2:] += 12.0
        for m in (model_sat, strict_sat):
            m.transformer.enc_out_bbox_embed.layers[-1].bias[2:] += 12.0
    ours, theirs = _run_both(hf_sat, strict_sat, CAPTIONS[0], pixels, mask)
    official, _ = _run_both(hf_sat, model_sat, CAPTIONS[0], pixels, mask)
    assert (ours.enc_boxes[..., 2:] > 1 - 1e-3).float().mean() > 0.5  # saturated references
    assert (ours.boxes - theirs.pred_boxes).abs().max() < BOX_TOL
    assert (official.boxes - theirs.pred_boxes).abs().max() > 10 * BOX_TOL


def test_reads_in_memory_state_dict_names(hf_model, hf_folder, gdino_models, tmp_path):
    """A file holding the model's own state dict: every tied copy, and with transformers 5 its
    in-memory Swin names (``swin.encoder...q_proj``) instead of the 4.x file names."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    v5_names = any(".swin.encoder." in k and ".q_proj." in k for k in state)
    assert v5_names == (int(transformers.__version__.split(".")[0]) >= 5)
    assert "model.decoder.bbox_embed.1.layers.0.weight" in state
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    model = load_model(tmp_path, tokenizer=gdino_models[0].tokenizer)
    ref = gdino_models[0].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_transformers_loads_gdino_written_folder(hf_model, gdino_models, tmp_path):
    from transformers import GroundingDinoForObjectDetection

    save_hf(gdino_models[0], tmp_path)
    reloaded, info = GroundingDinoForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ref = hf_model.state_dict()
    got = reloaded.state_dict()
    skip = re.compile(r"\.swin\.layernorm\.|relative_position_index")  # unused / recomputed
    compared = [k for k in ref if not skip.search(k)]
    assert len(compared) > 300
    assert all(torch.equal(got[k], ref[k]) for k in compared)
