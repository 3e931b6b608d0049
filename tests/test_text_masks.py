"""Sub-sentence masks and position ids: official parity (recorded fixture), per-item semantics."""

import json
from pathlib import Path

import pytest
import torch

from gdino.text.masks import official_sub_sentence_masks, sub_sentence_masks

FIXTURE = Path(__file__).parent / "fixtures" / "text_masks_official.json"
DATA = json.loads(FIXTURE.read_text())
CASES = DATA["cases"]
SPECIAL = tuple(DATA["special_ids"])


def _tensors(case):
    ids = torch.tensor(case["input_ids"])
    attn = torch.tensor(case["attention_mask"]).bool()
    masks = torch.tensor([[[c == "1" for c in row] for row in m] for m in case["masks"]])
    pos = torch.tensor(case["position_ids"])
    return ids, attn, masks, pos


def _single(caption):
    for case in CASES:
        if case["name"] == f"single: {caption}":
            return _tensors(case)
    raise KeyError(caption)


def test_fixture_is_small():
    assert FIXTURE.stat().st_size < 50_000


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_official_reproduction_is_bit_exact(case):
    ids, _, masks, pos = _tensors(case)
    got_masks, got_pos = official_sub_sentence_masks(ids, SPECIAL)
    assert got_masks.dtype == torch.bool and got_pos.dtype == torch.long
    assert torch.equal(got_masks, masks)
    assert torch.equal(got_pos, pos)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_per_item_equals_official_alone(case):
    """Each item, padded or not, gets what the official function gives it alone (cropped)."""
    ids, attn, _, _ = _tensors(case)
    masks, pos = sub_sentence_masks(ids, attn, SPECIAL)
    L = ids.shape[1]
    for b in range(ids.shape[0]):
        n = int(attn[b].sum())
        if case["captions"] is not None:
            _, _, want_masks, want_pos = _single(case["captions"][b])
        else:  # hand-made rows: run the official semantics on the unpadded row alone
            want_masks, want_pos = official_sub_sentence_masks(ids[b : b + 1, :n], SPECIAL)
        assert torch.equal(masks[b, :n, :n], want_masks[0])
        assert torch.equal(pos[b, :n], want_pos[0])
        # padding: diagonal only, position 0, never attended by real tokens
        assert torch.equal(masks[b, n:, :], torch.eye(L, dtype=torch.bool)[n:])
        assert not masks[b, :n, n:].any()
        assert not pos[b, n:].any()


def test_unpadded_batch_of_longest_equals_official():
    for case in CASES:
        ids, attn, masks, pos = _tensors(case)
        full = attn.all(1)
        if case["captions"] is None or not full.any():
            continue
        got_masks, got_pos = sub_sentence_masks(ids, attn, SPECIAL)
        assert torch.equal(got_masks[full], masks[full])
        assert torch.equal(got_pos[full], pos[full])


def test_padded_batch_differs_from_official_only_without_trailing_dot():
    """The official quirk: a shorter caption's [SEP] is not in the last column, so when no "."
    precedes it, it joins the trailing words' block. Normalized captions (ending in ".") are not
    affected."""
    for case in CASES:
        if case["captions"] is None or len(case["captions"]) < 2:
            continue
        ids, attn, masks, pos = _tensors(case)
        got_masks, got_pos = sub_sentence_masks(ids, attn, SPECIAL)
        for b, caption in enumerate(case["captions"]):
            same = torch.equal(got_masks[b], masks[b]) and torch.equal(got_pos[b], pos[b])
            n, L = int(attn[b].sum()), ids.shape[1]
            assert same == (caption.endswith(".") or n == L), caption
            if not same:  # "cat . dog" padded: official "dog [SEP]" block, positions 0, 1
                assert pos[b, n - 1] == 1 and got_pos[b, n - 1] == 0
                assert masks[b, n - 1, n - 2] and not got_masks[b, n - 1, n - 2]


def test_doc_example():
    # [CLS] cat . dog . [SEP] -> blocks {1,2}, {3,4}; ids [0,0,1,0,1,0]
    ids = torch.tensor([[101, 4937, 1012, 3899, 1012, 102]])
    masks, pos = sub_sentence_masks(ids)
    assert pos.tolist() == [[0, 0, 1, 0, 1, 0]]
    want = torch.eye(6, dtype=torch.bool)
    want[1:3, 1:3] = True
    want[3:5, 3:5] = True
    assert torch.equal(masks[0], want)


def test_alone_equals_padded_in_batch():
    short = [101, 4937, 1012, 3899, 1012, 102]
    long = [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 1037, 3899, 1012, 102]
    alone_masks, alone_pos = sub_sentence_masks(torch.tensor([short]))
    padded = torch.tensor([long, short + [0] * (len(long) - len(short))])
    attn = padded != 0
    masks, pos = sub_sentence_masks(padded, attn)
    n = len(short)
    assert torch.equal(masks[1, :n, :n], alone_masks[0])
    assert torch.equal(pos[1, :n], alone_pos[0])
    long_masks, long_pos = sub_sentence_masks(torch.tensor([long]))
    assert torch.equal(masks[0], long_masks[0]) and torch.equal(pos[0], long_pos[0])


def test_random_batches_match_official_per_item():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        B, L = (
            int(torch.randint(1, 5, (1,), generator=gen)),
            int(torch.randint(2, 20, (1,), generator=gen)),
        )
        lengths = torch.randint(2, L + 1, (B,), generator=gen)
        lengths[0] = L
        words = torch.randint(2000, 2010, (B, L), generator=gen)
        specials = torch.tensor(SPECIAL)[torch.randint(0, 4, (B, L), generator=gen)]
        ids = torch.where(torch.rand(B, L, generator=gen) < 0.3, specials, words)
        ids[:, 0] = 101
        attn = torch.arange(L)[None] < lengths[:, None]
        ids[torch.arange(B), lengths - 1] = 102
        ids[~attn] = 0
        masks, pos = sub_sentence_masks(ids, attn)
        for b in range(B):
            n = int(lengths[b])
            want_masks, want_pos = official_sub_sentence_masks(ids[b : b + 1, :n])
            assert torch.equal(masks[b, :n, :n], want_masks[0])
            assert torch.equal(pos[b, :n], want_pos[0])


def test_masks_are_symmetric_and_reflexive():
    ids = torch.tensor([[101, 4937, 1012, 1037, 3899, 1029, 5, 1012, 102, 0, 0]])
    masks, _ = sub_sentence_masks(ids, ids != 0)
    assert torch.equal(masks, masks.transpose(1, 2))
    assert masks.diagonal(dim1=1, dim2=2).all()


def test_left_padding_is_rejected():
    ids = torch.tensor([[0, 101, 4937, 1012, 102]])
    with pytest.raises(ValueError, match="prefix"):
        sub_sentence_masks(ids, ids != 0)


def test_empty_and_meta_shapes():
    masks, pos = sub_sentence_masks(torch.zeros(0, 5, dtype=torch.long))
    assert masks.shape == (0, 5, 5) and pos.shape == (0, 5)
