"""The model core on the tiny preset: contracts, batch independence, denoising, precision, size."""

from __future__ import annotations

import math

import pytest
import torch

from gdino.config import get_preset
from gdino.model.decoder import DenoisingQueries
from gdino.model.fusion import BiMultiHeadAttention
from gdino.model.grounding_dino import build_model
from gdino.model.position import box_sine_embedding, image_position_embedding, text_position_embedding

CAPTIONS = ["a cat . a remote control .", "dog . frisbee . the green traffic light ."]


def _image(seed: int, h: int = 224, w: int = 320) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_image_position_embedding_matches_formula():
    pad = torch.zeros(1, 3, 5, dtype=torch.bool)
    pad[:, :, 4] = True  # one padded column
    pe = image_position_embedding(pad, num_feats=6, temperature=20.0)
    assert pe.shape == (1, 12, 3, 5)
    for y in range(3):
        for x in range(4):
            ny = (y + 1) / (3 + 1e-6) * 2 * math.pi
            nx = (x + 1) / (4 + 1e-6) * 2 * math.pi
            for i in range(6):
                dim_t = 20.0 ** (2 * (i // 2) / 6)
                f = math.sin if i % 2 == 0 else math.cos
                assert pe[0, i, y, x].item() == pytest.approx(f(ny / dim_t), abs=1e-5)
                assert pe[0, 6 + i, y, x].item() == pytest.approx(f(nx / dim_t), abs=1e-5)


def test_image_position_embedding_of_unpadded_maps_broadcasts_rows_exactly(monkeypatch):
    """Unpadded maps take the broadcast path (one row / column embedded): equal to the formula and,
    bit for bit, to the element-wise path (forced here by pretending to export)."""
    pad = torch.zeros(2, 4, 6, dtype=torch.bool)
    pe = image_position_embedding(pad, num_feats=8, temperature=20.0)
    assert pe.shape == (2, 16, 4, 6)
    for y, x, i in [(0, 0, 0), (3, 5, 7), (2, 1, 3), (1, 4, 6)]:
        dim_t = 20.0 ** (2 * (i // 2) / 8)
        f = math.sin if i % 2 == 0 else math.cos
        assert pe[1, i, y, x].item() == pytest.approx(f((y + 1) / (4 + 1e-6) * 2 * math.pi / dim_t), abs=1e-5)
        assert pe[1, 8 + i, y, x].item() == pytest.approx(f((x + 1) / (6 + 1e-6) * 2 * math.pi / dim_t), abs=1e-5)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert torch.equal(image_position_embedding(pad, num_feats=8, temperature=20.0), pe)


def test_text_and_box_sine_embeddings_layout():
    ids = torch.tensor([[0, 1, 2]])
    pe = text_position_embedding(ids, 8)
    assert pe.shape == (1, 3, 8)
    assert pe[0, 2, 0].item() == pytest.approx(math.sin(2 * 2 * math.pi), abs=1e-5)
    assert pe[0, 2, 3].item() == pytest.approx(math.cos(2 * 2 * math.pi / 10000 ** (2 / 8)), abs=1e-5)
    box = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    emb = box_sine_embedding(box, 4)
    # order (y, x, w, h): the first channel is sin(2*pi*cy)
    assert emb[0, 0].item() == pytest.approx(math.sin(0.2 * 2 * math.pi), abs=1e-6)
    assert emb[0, 4].item() == pytest.approx(math.sin(0.1 * 2 * math.pi), abs=1e-6)
    assert emb[0, 12].item() == pytest.approx(math.sin(0.4 * 2 * math.pi), abs=1e-6)


def test_output_contract(tiny_model):
    text = tiny_model.tokenize(CAPTIONS)
    with torch.no_grad():
        out = tiny_model(torch.cat([_image(0), _image(1)]), text)
    q = tiny_model.config.num_queries
    assert out.logits.shape == (2, q, 256)
    assert out.boxes.shape == (2, q, 4)
    lengths = text.attention_mask.sum(1)
    for b in range(2):
        assert torch.isinf(out.logits[b, :, lengths[b] :]).all()
        assert torch.isfinite(out.logits[b, :, : lengths[b]]).all()
    assert ((out.boxes >= 0) & (out.boxes <= 1)).all()
    assert len(out.layer_logits) == tiny_model.config.dec_layers
    torch.testing.assert_close(out.layer_boxes[-1], out.boxes)
    assert out.text_mask.sum(1).tolist() == lengths.tolist()


def test_batched_equals_single_with_different_prompts(tiny_model):
    """Items of a batch (same-size images, different prompts and lengths) are independent."""
    images = torch.cat([_image(2), _image(3)])
    with torch.no_grad():
        batched = tiny_model(images, tiny_model.tokenize(CAPTIONS))
        for b, caption in enumerate(CAPTIONS):
            single = tiny_model(images[b : b + 1], tiny_model.tokenize([caption]))
            n = single.text_mask.sum()
            torch.testing.assert_close(batched.boxes[b], single.boxes[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.logits[b, :, :n], single.logits[0, :, :n], atol=1e-4, rtol=0)


def test_pixel_mask_all_true_equals_no_mask(tiny_model):
    image = _image(4)
    text = tiny_model.tokenize(CAPTIONS[:1])
    with torch.no_grad():
        a = tiny_model(image, text)
        b = tiny_model(image, text, pixel_mask=torch.ones(1, 224, 320, dtype=torch.bool))
    torch.testing.assert_close(a.boxes, b.boxes, atol=0, rtol=0)


def test_fusion_max_is_per_item():
    """One item's extreme scores must not change another item's fusion output (official leak)."""
    torch.manual_seed(0)
    attn = BiMultiHeadAttention(16, 16, 32, 2).eval()
    v = torch.randn(2, 10, 16)
    l = torch.randn(2, 5, 16)
    v[1] *= 3000.0  # makes item 1's scores huge
    with torch.no_grad():
        dv, dl = attn(v, l, None, None)
        dv0, dl0 = attn(v[:1], l[:1], None, None)
    torch.testing.assert_close(dv[0], dv0[0])
    torch.testing.assert_close(dl[0], dl0[0])


def test_denoising_queries_do_not_leak_into_matching_queries(tiny_model):
    image = _image(5)
    text = tiny_model.tokenize(CAPTIONS[:1])
    q = tiny_model.config.num_queries
    n = 6
    mask = torch.zeros(n + q, n + q, dtype=torch.bool)
    mask[n:, :n] = True  # matching queries cannot see denoising queries
    dn = DenoisingQueries(
        content=torch.randn(1, n, tiny_model.config.hidden_dim),
        ref_logits=torch.randn(1, n, 4),
        attn_mask=mask,
    )
    with torch.no_grad():
        plain = tiny_model(image, text)
        with_dn = tiny_model(image, text, dn=dn)
    torch.testing.assert_close(with_dn.boxes, plain.boxes, atol=1e-5, rtol=0)
    assert with_dn.dn_boxes[-1].shape == (1, n, 4)
    assert with_dn.dn_logits[-1].shape == (1, n, 256)


@pytest.mark.parametrize(
    "dtype,mem_tol,box_tol,logit_tol", [(torch.bfloat16, 0.04, 0.05, 0.08), (torch.float16, 0.005, 0.01, 0.01)]
)
def test_half_precision_close_to_fp32(tiny_model, dtype, mem_tol, box_tol, logit_tol, monkeypatch):
    """Half precision against fp32 on the same weights.

    Query selection is a top-k over near-tied scores (random weights), so the half run is given the
    fp32 run's selected queries (cast to its dtype); then: encoder memory within ``mem_tol`` relative
    (bf16 keeps 8 mantissa bits, fp16 11), every final box within ``box_tol`` absolute and every
    valid logit within ``logit_tol`` of the largest logit.
    """
    import gdino.model.grounding_dino as gd

    image = _image(6)
    text = tiny_model.tokenize(CAPTIONS[:1])
    seen = {}
    original = gd.select_queries

    def spy(memory, *args, **kwargs):
        result = original(memory, *args, **kwargs)
        if "ref" in seen:  # the half run: reuse the fp32 selection
            seen["half_memory"] = memory
            return tuple(t.to(memory.dtype) for t in seen["ref"])
        seen["memory"], seen["ref"] = memory, result
        return result

    monkeypatch.setattr(gd, "select_queries", spy)
    with torch.no_grad():
        ref = tiny_model(image, text)
        half = build_model(tiny_model.config, tiny_model.tokenizer)
        half.load_state_dict(tiny_model.state_dict())
        half = half.to(dtype).eval()
        out = half(image.to(dtype), text)
    assert out.boxes.dtype == dtype
    assert torch.isfinite(out.boxes).all()
    mem, half_mem = seen["memory"], seen["half_memory"].float()
    assert ((half_mem - mem).norm() / mem.norm()).item() < mem_tol
    assert (out.boxes.float() - ref.boxes).abs().max().item() < box_tol
    valid = ref.text_mask[0]
    logit_err = (out.logits.float()[0][:, valid] - ref.logits[0][:, valid]).abs().max().item()
    assert logit_err < logit_tol * ref.logits[0][:, valid].abs().max().item()


def test_autocast_bf16_runs(tiny_model):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(_image(7), tiny_model.tokenize(CAPTIONS[:1]))
    assert torch.isfinite(out.boxes).all()


def test_gradients_and_checkpointing(tiny_model):
    model = build_model(tiny_model.config, tiny_model.tokenizer)
    model.load_state_dict(tiny_model.state_dict())
    model.train()
    text = model.tokenize(CAPTIONS[:1])
    image = _image(8)
    torch.manual_seed(0)
    out = model(image, text)
    loss = out.boxes.sum() + out.logits[out.logits.isfinite()].sigmoid().sum() + out.enc_boxes.sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert "transformer.encoder.fusion_layers.0.gamma_v" in grads
    assert "backbone.patch_embed.proj.weight" in grads
    model.zero_grad()
    model.use_checkpoint = True
    torch.manual_seed(0)
    out = model(image, text)
    loss = out.boxes.sum() + out.logits[out.logits.isfinite()].sigmoid().sum() + out.enc_boxes.sum()
    loss.backward()
    for k, g in grads.items():
        torch.testing.assert_close(model.get_parameter(k).grad, g, atol=1e-5, rtol=1e-4)


def test_swin_t_parameter_count():
    """The official swin-t model has 172,839,682 unique parameters (BERT pooler included)."""
    model = build_model(get_preset("swin-t"))
    assert model.num_parameters() == 172_839_682


def test_calibrated_logits_are_an_affine_map_of_the_plain_ones(tiny_model):
    """``calibrated_logits`` (for training from scratch): logits/sqrt(d) + bias, same queries and boxes."""
    import dataclasses

    cfg = dataclasses.replace(tiny_model.config, calibrated_logits=True)
    model = build_model(cfg, tiny_model.tokenizer)
    missing, unexpected = model.load_state_dict(tiny_model.state_dict(), strict=False)
    assert missing == ["logit_bias"] and not unexpected
    assert model.logit_bias.item() == pytest.approx(-math.log(99.0))
    with torch.no_grad():
        model.logit_bias.fill_(-2.0)
        image, text = _image(8), tiny_model.tokenize(CAPTIONS[:1])
        plain, calibrated = tiny_model(image, text), model.eval()(image, text)
    torch.testing.assert_close(calibrated.boxes, plain.boxes, atol=1e-6, rtol=0)
    valid = plain.text_mask[0]
    scale = cfg.hidden_dim**-0.5
    torch.testing.assert_close(
        calibrated.logits[0][:, valid], plain.logits[0][:, valid] * scale - 2.0, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        calibrated.enc_logits[0][:, valid], plain.enc_logits[0][:, valid] * scale - 2.0, atol=1e-5, rtol=1e-5
    )
    assert torch.isneginf(calibrated.logits[0][:, ~valid]).all()
