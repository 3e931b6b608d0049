"""Padding single-caption tensors into one batch (the server's mixed prompts): equal to what the
tokenizer gives for the captions tokenized together, and the exported graphs' text padded alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdino.text.padding import pad_right, pad_square, pad_tokenized
from gdino.text.tokenize import tokenize

CAPTIONS = ["a cat .", "a cat . a remote control . the green sofa .", "dog . sofa", "the ear ."]


def test_pad_tokenized_equals_tokenizing_together(tokenizer):
    together = tokenize(tokenizer, CAPTIONS)  # the reference: the tokenizer pads the batch itself
    alone = [tokenize(tokenizer, [c]) for c in CAPTIONS]
    assert len({a.input_ids.shape[1] for a in alone}) > 1  # really different lengths
    padded = pad_tokenized(alone)
    for name in ("input_ids", "attention_mask", "token_type_ids", "position_ids", "self_attention_masks"):
        want, got = getattr(together, name), getattr(padded, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name


def test_pad_tokenized_one_caption_is_unchanged(tokenizer):
    one = tokenize(tokenizer, ["a cat ."])
    assert pad_tokenized([one]) is one
    with pytest.raises(ValueError, match="no tokenized"):
        pad_tokenized([])


def test_pad_helpers():
    mask = torch.tensor([[[True, False], [True, True]]])
    got = pad_square(mask, 4)
    want = torch.tensor([[[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]], dtype=torch.bool)
    assert torch.equal(got, want)
    assert torch.equal(pad_right(torch.tensor([[True, True]]), 3, 1, False), torch.tensor([[True, True, False]]))
    assert torch.equal(pad_right(torch.ones(1, 2, 1), 3, 1, 0.0)[0, :, 0], torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError):
        pad_right(torch.ones(1, 3), 2, 1, 0)
    with pytest.raises(ValueError):
        pad_square(torch.ones(1, 3, 3, dtype=torch.bool), 2)


def test_runtime_text_pad_batch(tokenizer):
    from gdino.export.runtimes import RuntimeText

    alone = [tokenize(tokenizer, [c]) for c in CAPTIONS[:2]]
    features = [
        np.random.default_rng(i).standard_normal((1, a.input_ids.shape[1], 8)).astype(np.float32)
        for i, a in enumerate(alone)
    ]
    # the single graph: only the tokenized inputs
    plain = RuntimeText.pad_batch([RuntimeText(a) for a in alone])
    assert plain.features is None and torch.equal(
        plain.tokenized.input_ids, tokenize(tokenizer, CAPTIONS[:2]).input_ids
    )
    # the split graphs: the text graph's features too, zeros on the padded (masked) tokens
    split = RuntimeText.pad_batch([RuntimeText(a, f) for a, f in zip(alone, features)])
    n = features[0].shape[1]
    assert split.features is not None and split.features.shape == (2, features[1].shape[1], 8)
    np.testing.assert_array_equal(split.features[0, :n], features[0][0])
    assert not split.features[0, n:].any()
    np.testing.assert_array_equal(split.features[1], features[1][0])
    assert len(split.expand(2)) == 2
    with pytest.raises(ValueError, match="with and without"):
        RuntimeText.pad_batch([RuntimeText(alone[0], features[0]), RuntimeText(alone[1])])
