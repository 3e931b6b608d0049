"""build_prompt(): class lists and captions of any length become chunks that fit, none dropped."""

from __future__ import annotations

import random

import pytest
import torch

from gdino.errors import PromptError
from gdino.infer.prompts import build_prompt
from gdino.text.captions import classes_to_caption, normalize_caption


def vocab_words(tokenizer, n: int, seed: int = 0) -> list[str]:
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3]
    words.sort()
    return random.Random(seed).sample(words, n)


def lvis_sized_classes(tokenizer, n: int = 1203) -> list[str]:
    """1,203 distinct names of 1-3 words (some glued into rare words that split into pieces)."""
    words = vocab_words(tokenizer, 3000)
    rng = random.Random(1)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        k = rng.choice([1, 1, 2, 3])
        name = " ".join(rng.choice(words) for _ in range(k))
        if rng.random() < 0.2:
            name = name.replace(" ", "") + "s"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def rows_decode(tokenizer, chunk) -> list[str]:
    """The tokens each positive-map row points at, decoded."""
    ids = tokenizer(chunk.caption)["input_ids"]
    out = []
    for row in chunk.positive_map:
        cols = row.nonzero().flatten().tolist()
        out.append(tokenizer.decode([ids[c] for c in cols]))
    return out


class TestClassesMode:
    def test_short_list_is_one_official_caption(self, tokenizer):
        p = build_prompt(tokenizer, ["Cat", "remote  control"])
        assert p.mode == "classes"
        assert p.class_names == ("Cat", "remote control")
        assert len(p.chunks) == 1
        (chunk,) = p.chunks
        assert chunk.caption == classes_to_caption(["cat", "remote control"])[0] == "cat . remote control ."
        assert chunk.class_indices == (0, 1)
        assert chunk.positive_map.shape == (2, 256)
        # rows are normalized: each sums to 1 (tolerance: float32 rounding)
        assert torch.allclose(chunk.positive_map.sum(-1), torch.ones(2), atol=1e-6)
        assert rows_decode(tokenizer, chunk) == ["cat", "remote control"]

    def test_lvis_size_list_is_split_and_nothing_is_dropped(self, tokenizer):
        classes = lvis_sized_classes(tokenizer)
        p = build_prompt(tokenizer, classes)
        assert len(p.chunks) > 1
        flat = [i for c in p.chunks for i in c.class_indices]
        assert flat == list(range(len(classes)))  # every class once, in order
        for chunk in p.chunks:
            assert len(tokenizer(chunk.caption)["input_ids"]) <= 256
            assert chunk.positive_map.shape == (len(chunk.class_indices), 256)
            assert rows_decode(tokenizer, chunk) == [
                tokenizer.decode(tokenizer(classes[i])["input_ids"][1:-1]) for i in chunk.class_indices
            ]

    def test_chunk_size_follows_max_text_len(self, tokenizer):
        classes = vocab_words(tokenizer, 40)
        small = build_prompt(tokenizer, classes, max_text_len=32)
        assert len(small.chunks) > 1
        assert all(len(tokenizer(c.caption)["input_ids"]) <= 32 for c in small.chunks)
        assert [i for c in small.chunks for i in c.class_indices] == list(range(40))

    @pytest.mark.parametrize(
        "bad",
        [[], [""], ["cat", "   "], ["st. bernard"], ["cat", 3], 5, [" ".join(["cat"] * 300)]],
    )
    def test_bad_class_lists_are_prompt_errors(self, tokenizer, bad):
        with pytest.raises(PromptError) as err:
            build_prompt(tokenizer, bad)
        assert "\n" not in str(err.value)


class TestPhraseMode:
    def test_caption_is_normalized_and_phrases_named(self, tokenizer):
        p = build_prompt(tokenizer, "A Cat . remote control")
        assert p.mode == "phrases"
        assert [c.caption for c in p.chunks] == ["a cat . remote control."]
        assert p.class_names == ("a cat", "remote control")
        # segments: "a cat", "remote control", and the empty one before [SEP]
        assert p.chunks[0].segment_classes == (0, 1, -1)

    def test_long_caption_is_split_at_separators(self, tokenizer):
        phrases = [" ".join(w) for w in zip(vocab_words(tokenizer, 300, 2)[::2], vocab_words(tokenizer, 300, 2)[1::2])]
        text = " . ".join(phrases)
        assert len(tokenizer(normalize_caption(text))["input_ids"]) > 256
        p = build_prompt(tokenizer, text)
        assert len(p.chunks) > 1
        assert all(len(tokenizer(c.caption)["input_ids"]) <= 256 for c in p.chunks)
        assert list(p.class_names) == phrases  # every phrase kept, in order
        ids = [g for c in p.chunks for g in c.segment_classes if g >= 0]
        assert ids == list(range(len(phrases)))

    @pytest.mark.parametrize("bad", ["", "   ", ".", " . , ! ", "?"])
    def test_empty_or_punctuation_prompt(self, tokenizer, bad):
        with pytest.raises(PromptError, match="names nothing"):
            build_prompt(tokenizer, bad)

    def test_prompt_object_passes_through(self, tokenizer):
        p = build_prompt(tokenizer, "cat")
        assert build_prompt(tokenizer, p) is p
        assert p.key == build_prompt(tokenizer, "cat").key
