"""The MM-Grounding-DINO / LLMDet head variant as config fields: scaled and biased class heads, and
per-layer (unshared) class and box heads. The reference for every number is written out here."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from conftest import randomize_

from gdino.config import PRESETS, GroundingDINOConfig, get_preset
from gdino.errors import GdinoError
from gdino.model.grounding_dino import build_model
from gdino.model.heads import ContrastiveHead, contrastive_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, t = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 7, 16, generator=gen)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    return q, t, mask


def test_plain_head_is_the_dot_product_and_has_no_parameters():
    head = ContrastiveHead(12)
    q, t, mask = _inputs()
    assert not list(head.parameters())
    assert torch.equal(head(q, t, mask), contrastive_logits(q, t, mask, 12))


@pytest.mark.parametrize("scale", ["sqrt", "learned"])
def test_scaled_biased_head_matches_the_formula(scale):
    head = ContrastiveHead(12, scale=scale, bias=True)
    assert head.bias.item() == pytest.approx(-math.log(99.0))
    with torch.no_grad():
        head.bias.fill_(0.3)
        if scale == "learned":
            head.log_scale.fill_(-1.5)
    q, t, mask = _inputs(1)
    factor = 1 / 4.0 if scale == "sqrt" else math.exp(-1.5)  # sqrt(16) = 4
    want = torch.full((2, 5, 12), float("-inf"))
    for b in range(2):
        n = int(mask[b].sum())
        want[b, :, :n] = torch.einsum("qd,ld->ql", q[b], t[b, :n]) * factor + 0.3
    got = head(q, t, mask)
    assert torch.isinf(got[1, :, 4:]).all() and torch.isinf(got[:, :, 7:]).all()
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], atol=1e-5)


def test_presets_of_the_released_sizes():
    for family in ("mm-grounding-dino", "llmdet"):
        for size, embed, levels in (("tiny", 96, 4), ("base", 128, 4), ("large", 192, 5)):
            cfg = get_preset(f"{family}-{size}")
            assert cfg.backbone.embed_dim == embed and cfg.num_feature_levels == levels
            assert (cfg.contrastive_scale, cfg.contrastive_bias) == ("sqrt", True)
            assert not cfg.share_class_head and not cfg.share_box_head and not cfg.text.with_pooler
            assert (cfg.num_queries, cfg.max_text_len, cfg.hidden_dim) == (900, 256, 256)
    assert get_preset("mm-grounding-dino-large").backbone.out_indices == (0, 1, 2, 3)
    assert get_preset("mm-grounding-dino-large").backbone.window_size == 12
    for name in ("swin-t", "swin-b", "tiny"):  # the original head stays the default
        cfg = PRESETS[name]
        assert (cfg.contrastive_scale, cfg.contrastive_bias, cfg.share_class_head, cfg.share_box_head) == (
            "none",
            False,
            True,
            True,
        )


def test_config_round_trip_and_bad_values():
    cfg = get_preset("tiny-mm")
    assert GroundingDINOConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(GdinoError, match="contrastive_scale"):
        dataclasses.replace(cfg, contrastive_scale="cubic")
    with pytest.raises(GdinoError, match="calibrated_logits"):
        dataclasses.replace(cfg, calibrated_logits=True)


def test_parameter_names_of_the_variant():
    keys = set(build_model(get_preset("tiny-mm")).state_dict())
    assert {"class_embed.0.bias", "class_embed.1.bias", "transformer.enc_out_class_embed.bias"} <= keys
    assert {"bbox_embed.0.layers.2.weight", "bbox_embed.1.layers.2.weight"} <= keys
    assert not any(k.startswith("bert.pooler.") for k in keys)
    plain = set(build_model(get_preset("tiny")).state_dict())
    assert not any("class_embed" in k for k in plain) and "bbox_embed.layers.0.weight" in plain


def _forward(model, tokenizer, seed=3):
    model.tokenizer = tokenizer
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, 128, 160, generator=gen)
    with torch.no_grad():
        return model(pixels, model.tokenize(["a cat . a remote control ."]))


def test_unshared_heads_act_per_layer(tokenizer):
    """Layer i uses head i: per-layer heads all equal to one shared head give the shared model's
    outputs; changing the last layer's heads changes only the last layer's outputs."""
    cfg = get_preset("tiny-mm")
    unshared = randomize_(build_model(cfg), seed=4)
    shared = build_model(dataclasses.replace(cfg, share_class_head=True, share_box_head=True))
    state = unshared.state_dict()
    for i in range(cfg.dec_layers):  # every layer gets layer 0's heads
        for k in [k for k in state if k.startswith(("bbox_embed.0.", "class_embed.0."))]:
            state[k.replace(".0.", f".{i}.", 1)] = state[k]
    unshared.load_state_dict(state)
    ref = {
        k.replace("bbox_embed.0.", "bbox_embed.").replace("class_embed.0.", "class_embed."): v
        for k, v in state.items()
        if not k.startswith(("bbox_embed.1.", "class_embed.1."))
    }
    shared.load_state_dict(ref)
    a, b = _forward(unshared, tokenizer), _forward(shared, tokenizer)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.boxes, b.boxes)

    changed = copy.deepcopy(unshared)
    with torch.no_grad():
        changed.class_embed[1].bias += 1.0
        changed.bbox_embed[1].layers[2].bias += 0.5
    c = _forward(changed, tokenizer)
    assert torch.equal(c.layer_logits[0], a.layer_logits[0]) and torch.equal(c.layer_boxes[0], a.layer_boxes[0])
    valid = torch.isfinite(a.logits)
    assert torch.allclose(c.logits[valid], a.logits[valid] + 1.0, atol=1e-5)
    assert not torch.allclose(c.boxes, a.boxes)


def test_encoder_head_bias_shifts_encoder_logits_only(tokenizer):
    """A constant shift of the query-selection head moves its logits and nothing else (the top-k
    ranking, and so the decoder, are unchanged)."""
    model = randomize_(build_model(get_preset("tiny-mm")), seed=5)
    a = _forward(model, tokenizer)
    with torch.no_grad():
        model.transformer.enc_out_class_embed.bias += 2.0
    b = _forward(model, tokenizer)
    valid = torch.isfinite(a.enc_logits)
    assert torch.allclose(b.enc_logits[valid], a.enc_logits[valid] + 2.0, atol=1e-5)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.boxes, b.boxes)
