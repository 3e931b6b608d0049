"""Contrastive denoising: mask structure, query layout, noise statistics, and the model contract."""

from __future__ import annotations

import torch

from gdino.data.targets import Target
from gdino.model.decoder import DenoisingQueries
from gdino.model.features import TextFeatures
from gdino.ops.boxes import cxcywh_to_xyxy
from gdino.train.denoising import (
    DenoisingConfig,
    build_denoising,
    denoising_attn_mask,
    noise_boxes,
    noise_labels,
    num_groups,
)


def _target(boxes, spans) -> Target:
    token_map = torch.zeros(len(spans), 256, dtype=torch.bool)
    for k, (a, b) in enumerate(spans):
        token_map[k, a:b] = True
    return Target(boxes=torch.tensor(boxes, dtype=torch.float32), token_map=token_map, labels=torch.arange(len(spans)))


def _text(b: int, length: int, valid: list[int], d: int = 8, seed: int = 0) -> TextFeatures:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i, n in enumerate(valid):
        mask[i, :n] = True
    return TextFeatures(
        features=torch.randn(b, length, d, generator=gen),
        token_mask=mask,
        self_attention_masks=torch.ones(b, length, length, dtype=torch.bool),
        position_ids=torch.arange(length).repeat(b, 1),
    )


def test_attn_mask_by_hand():
    # 2 groups of (2 positives + 2 negatives), 3 matching queries; 1 = may not attend
    expected = torch.tensor(
        [
            [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(denoising_attn_mask(8, 2, 3), expected)
    assert num_groups(3, 100) == 33 and num_groups(150, 100) == 1 and num_groups(0, 100) == 100


def test_layout_meta_and_content():
    targets = [
        _target([[0.3, 0.4, 0.2, 0.2], [0.6, 0.6, 0.3, 0.1]], [(1, 3), (4, 7)]),
        _target([[0.5, 0.5, 0.4, 0.4]], [(1, 2)]),
    ]
    text = _text(2, 10, [9, 5])
    dn, meta = build_denoising(
        targets,
        text,
        num_queries=3,
        config=DenoisingConfig(dn_number=4, label_noise=0.0),
        generator=torch.Generator().manual_seed(0),
    )
    assert (meta.num_groups, meta.group_size, meta.num_queries, dn.num) == (2, 2, 8, 8)
    assert dn.content.shape == (2, 8, 8) and dn.ref_logits.shape == (2, 8, 4) and dn.attn_mask.shape == (11, 11)
    assert meta.pos_query[0].tolist() == [0, 1, 4, 5] and meta.neg_query[0].tolist() == [2, 3, 6, 7]
    assert meta.pos_target[0].tolist() == [0, 1, 0, 1] and meta.neg_target[0].tolist() == [0, 1, 0, 1]
    assert meta.pos_query[1].tolist() == [0, 4] and meta.neg_query[1].tolist() == [2, 6]
    valid = meta.valid()
    assert valid[0].all() and valid[1].tolist() == [True, False, True, False, True, False, True, False]
    f = text.features
    for q in (0, 2, 4, 6):  # box 0 of image 0: tokens 1..2
        torch.testing.assert_close(dn.content[0, q], f[0, 1:3].mean(0))
    for q in (1, 3, 5, 7):
        torch.testing.assert_close(dn.content[0, q], f[0, 4:7].mean(0))
    torch.testing.assert_close(dn.content[1, 2], f[1, 1])
    assert (dn.content[1, ~valid[1]] == 0).all()
    # one prompt for the whole batch is expanded
    one = TextFeatures(f[:1], text.token_mask[:1], text.self_attention_masks[:1], text.position_ids[:1])
    dn1, _ = build_denoising(targets, one, 3, DenoisingConfig(dn_number=4, label_noise=0.0))
    torch.testing.assert_close(dn1.content[1, 2], f[0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer builds queries inside autocast
        dn_amp, _ = build_denoising(targets, text, 3, DenoisingConfig(dn_number=4, label_noise=0.0))
    assert dn_amp.content.dtype == torch.float32
    torch.testing.assert_close(dn_amp.content, dn.content, atol=0.02, rtol=0.02)  # bf16 matmul
    empty = Target(
        boxes=torch.zeros(0, 4),
        token_map=torch.zeros(0, 256, dtype=torch.bool),
        labels=torch.zeros(0, dtype=torch.long),
    )
    assert build_denoising([empty, empty], text, 3) is None
    assert build_denoising(targets, text, 3, DenoisingConfig(dn_number=0)) is None


def test_box_noise_statistics():
    gen = torch.Generator().manual_seed(0)
    k = 4000
    boxes = torch.cat((0.4 + 0.2 * torch.rand(k, 2, generator=gen), 0.02 + 0.1 * torch.rand(k, 2, generator=gen)), -1)
    negative = torch.arange(k) % 2 == 1
    noisy = noise_boxes(boxes, negative, 1.0, torch.Generator().manual_seed(5))
    half = torch.cat((boxes[:, 2:], boxes[:, 2:]), -1) / 2
    rel = ((cxcywh_to_xyxy(noisy) - cxcywh_to_xyxy(boxes)) / half).abs()  # no clamping happens here
    pos, neg = rel[~negative], rel[negative]
    assert pos.max() < 1 + 1e-4 and neg.min() > 1 - 1e-4 and neg.max() < 2 + 1e-4
    # U[0,1) and U[1,2): means 0.5 and 1.5, sd 0.29 / sqrt(8000) = 0.003
    assert abs(pos.mean().item() - 0.5) < 0.02 and abs(neg.mean().item() - 1.5) < 0.02
    signed = (cxcywh_to_xyxy(noisy) - cxcywh_to_xyxy(boxes)) / half
    assert abs((signed > 0).float().mean().item() - 0.5) < 0.02  # random signs
    scaled = noise_boxes(boxes, negative, 0.4, torch.Generator().manual_seed(5))
    rel04 = ((cxcywh_to_xyxy(scaled) - cxcywh_to_xyxy(boxes)) / half).abs()
    torch.testing.assert_close(rel04, 0.4 * rel, atol=1e-4, rtol=1e-4)  # same draws, scaled noise


def test_label_noise_statistics_and_candidates():
    gen = torch.Generator().manual_seed(1)
    cands = torch.zeros(3, 12, dtype=torch.bool)
    cands[0, 1:3] = cands[1, 4] = cands[2, 6:9] = True
    maps = cands[torch.arange(3000) % 3]
    new, flipped = noise_labels(maps, cands, valid_len=11, ratio=0.5, generator=gen)
    # flip probability ratio / 2 = 0.25; binomial sd sqrt(.25*.75/3000) = 0.008
    assert abs(flipped.float().mean().item() - 0.25) < 0.03
    assert torch.equal(new[~flipped], maps[~flipped])
    assert (new[flipped] != maps[flipped]).any(-1).all()  # always another class
    assert ((new[flipped][:, None] == cands[None]).all(-1).sum(-1) == 1).all()  # ... of the prompt
    # one class only: a random span of 1-3 tokens strictly between [CLS] (0) and [SEP] (10)
    new1, flipped1 = noise_labels(cands[:1].repeat(400, 1), cands[:1], valid_len=11, ratio=1.0, generator=gen)
    spans = new1[flipped1]
    assert len(spans) > 100 and (spans[:, 0] == 0).all() and (spans[:, 10:] == 0).all()
    sizes = spans.sum(-1)
    assert sizes.min() >= 1 and sizes.max() <= 3
    first = spans.float().argmax(-1)
    assert all(spans[i, first[i] : first[i] + sizes[i]].all() for i in range(len(spans)))  # contiguous


def test_built_queries_carry_noised_boxes_and_labels():
    boxes = [[0.5, 0.5, 0.2, 0.2]] * 4
    targets = [_target(boxes, [(1, 3), (4, 5), (1, 3), (6, 8)])]
    text = _text(1, 12, [11])
    cfg = DenoisingConfig(dn_number=200, label_noise=0.5, box_noise=1.0, eps=1e-3)
    dn, meta = build_denoising(targets, text, 5, cfg, generator=torch.Generator().manual_seed(2))
    assert meta.num_groups == 50 and dn.num == 400
    b = torch.sigmoid(dn.ref_logits[0])
    box = torch.tensor(boxes[0])
    d = ((cxcywh_to_xyxy(b) - cxcywh_to_xyxy(box)) / 0.1).abs()
    assert d[meta.pos_query[0]].max() < 1 + 1e-3
    # negatives whose corners crossed (as in DINO/mmdet) collapse to width or height eps; the rest
    # keep every corner at least half a box size away
    neg = b[meta.neg_query[0]]
    kept = (neg[:, 2:] > 2e-3).all(-1)
    assert kept.sum() > 100 and d[meta.neg_query[0]][kept].min() > 1 - 1e-3
    flipped = meta.label_flipped[0]
    assert abs(flipped.float().mean().item() - 0.25) < 0.07
    f = text.features[0]
    means = torch.stack([f[1:3].mean(0), f[4], f[6:8].mean(0)])  # the three distinct classes
    for q in range(400):
        own = (dn.content[0, q] - means).norm(dim=-1).argmin().item()
        assert torch.allclose(dn.content[0, q], means[own], atol=1e-5)
        target = (
            meta.pos_target[0][(meta.pos_query[0] == q).nonzero()].flatten().tolist()
            or meta.neg_target[0][(meta.neg_query[0] == q).nonzero()].flatten().tolist()
        )
        true_class = {0: 0, 1: 1, 2: 0, 3: 2}[target[0]]
        assert (own != true_class) == bool(flipped[q])


def test_model_matching_outputs_unchanged_by_denoising(tiny_model, one_thread):
    text = tiny_model.tokenize(["a cat . a remote control .", "dog . frisbee ."])
    pixels = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    targets = [
        _target([[0.3, 0.4, 0.2, 0.2], [0.6, 0.6, 0.3, 0.1]], [(1, 3), (4, 7)]),
        _target([[0.5, 0.5, 0.4, 0.4]], [(1, 2)]),
    ]
    q = tiny_model.config.num_queries
    with torch.no_grad():
        imf = tiny_model.encode_image(pixels)
        tf = tiny_model.encode_text(text)
        plain = tiny_model.forward_features(imf, tf)
        cfg = DenoisingConfig(dn_number=10, eps=tiny_model.config.inverse_sigmoid_eps)
        dn, meta = build_denoising(targets, tf, q, cfg, generator=torch.Generator().manual_seed(0))
        out = tiny_model.forward_features(imf, tf, dn)
        # change every group but the first: the first group's outputs must not move
        other = DenoisingQueries(dn.content.clone(), dn.ref_logits.clone(), dn.attn_mask)
        other.content[:, 4:] += torch.randn(other.content[:, 4:].shape, generator=torch.Generator().manual_seed(1))
        other.ref_logits[:, 4:] += 1.0
        moved = tiny_model.forward_features(imf, tf, other)
    assert dn.num == 20 and len(out.dn_logits) == len(out.layer_logits) == tiny_model.config.dec_layers
    assert out.dn_logits[-1].shape == (2, 20, 256) and out.dn_boxes[-1].shape == (2, 20, 4)
    for a, b in zip(out.layer_logits + out.layer_boxes, plain.layer_logits + plain.layer_boxes):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # float32 reassociation only
    for a, b in zip(moved.dn_logits + moved.dn_boxes, out.dn_logits + out.dn_boxes):
        torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-4, rtol=1e-4)
    for a, b in zip(moved.layer_logits + moved.layer_boxes, plain.layer_logits + plain.layer_boxes):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(moved.dn_boxes[-1][:, 4:], out.dn_boxes[-1][:, 4:], atol=1e-3)
    # and the denoising queries do see their content: outputs differ between positives of two boxes
    assert not torch.allclose(out.dn_boxes[-1][0, 0], out.dn_boxes[-1][0, 1])


def test_training_forward_on_an_image_with_fewer_tokens_than_queries(tiny_model, one_thread):
    """Query selection keeps min(num_queries, encoder tokens); the denoising attention mask must be
    built for that many matching queries (it was built for num_queries and the decoder failed)."""
    from gdino.train.trainer import TrainForward

    cfg = DenoisingConfig(dn_number=10, eps=tiny_model.config.inverse_sigmoid_eps)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = sum(m.shape[-2] * m.shape[-1] for m in tiny_model.encode_image(pixels).maps)
    assert tokens < tiny_model.config.num_queries  # the case under test
    targets = [_target([[0.4, 0.5, 0.3, 0.2]], [(1, 2)])]
    with torch.no_grad():
        out, meta, _ = TrainForward(tiny_model, cfg)(
            pixels, torch.ones(1, 32, 32, dtype=torch.bool), ["cat ."], targets
        )
    assert out.layer_boxes[-1].shape == (1, tokens, 4)
    assert out.dn_boxes[-1].shape[1] == meta.num_queries == 20  # 10 groups of one positive and one negative
