"""Caption normalization, class list -> caption with char spans, phrase splitting."""

import pytest

from gdino.errors import PromptError
from gdino.text.captions import (
    classes_to_caption,
    clean_class_name,
    normalize_caption,
    split_phrases,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat . a remote control .", "a cat . a remote control ."),
        ("A Cat", "a cat."),
        ("  cat . dog  ", "cat . dog."),
        ("cat.", "cat."),
        ("CAT?", "cat?."),
        ("\tdog\n", "dog."),
        ("Ünïcode Straße", "ünïcode straße."),
        ("3 apples", "3 apples."),
    ],
)
def test_normalize_caption(text, expected):
    assert normalize_caption(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\t", ".", " . . ", "?!", "...", "-"])
def test_normalize_caption_rejects_empty_and_punctuation(text):
    with pytest.raises(PromptError) as info:
        normalize_caption(text)
    assert "\n" not in str(info.value)


def test_normalize_caption_rejects_non_string():
    with pytest.raises(PromptError):
        normalize_caption(None)


def test_classes_to_caption_official_style():
    names = ["person", "Bicycle", "traffic light"]
    caption, spans = classes_to_caption(names)
    assert caption == " . ".join(n.lower() for n in names) + " ."
    assert caption == "person . bicycle . traffic light ."
    assert [caption[s:e] for s, e in spans] == ["person", "bicycle", "traffic light"]


def test_classes_to_caption_cleans_whitespace():
    caption, spans = classes_to_caption(["  Hot   Dog ", "cat"])
    assert caption == "hot dog . cat ."
    assert [caption[s:e] for s, e in spans] == ["hot dog", "cat"]


def test_single_class():
    assert classes_to_caption(["cat"]) == ("cat .", [(0, 3)])


@pytest.mark.parametrize(
    "classes",
    [[], ["cat", ""], ["cat", "   "], ["st. bernard"], ["what?"], "cat . dog", ["cat", 3]],
)
def test_classes_to_caption_rejects(classes):
    with pytest.raises(PromptError) as info:
        classes_to_caption(classes)
    assert "\n" not in str(info.value)


def test_clean_class_name():
    assert clean_class_name(" Traffic\tLight ") == "traffic light"
    assert clean_class_name("bow_(weapon)") == "bow_(weapon)"


def test_split_phrases():
    caption = "a cat . remote control."
    phrases = split_phrases(caption)
    assert phrases == [("a cat", (0, 5)), ("remote control", (8, 22))]
    for text, (s, e) in phrases:
        assert caption[s:e] == text


def test_split_phrases_skips_empty_pieces():
    caption = " . cat .  . big dog . "
    phrases = split_phrases(caption)
    assert [p for p, _ in phrases] == ["cat", "big dog"]
    for text, (s, e) in phrases:
        assert caption[s:e] == text


def test_split_phrases_of_class_caption_matches_spans():
    caption, spans = classes_to_caption(["cat", "remote control", "teddy bear"])
    assert [span for _, span in split_phrases(caption)] == spans
