"""Training prompts: positives always in, caps respected, token maps on the right tokens, seeded."""

from __future__ import annotations

import pytest
import torch

from gdino.data.prompts import (
    PromptConfig,
    class_token_counts,
    detection_prompt,
    grounding_prompt,
    normalize_caption_spans,
    swap_left_right,
    token_map,
)
from gdino.errors import GdinoError

CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "hippopotamus", "lawn mower", "xylophone",
]  # fmt: skip


def decoded(tokenizer, caption: str, tokens) -> str:
    ids = tokenizer(caption)["input_ids"]
    return tokenizer.decode([ids[t] for t in tokens])


def test_positives_always_in_and_token_spans_decode_to_class_names(tokenizer):
    positives = [15, 16, 2, 16, 9]  # cat, dog, car, dog again, traffic light
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        prompt, phrase_of = detection_prompt(tokenizer, CLASSES, positives, PromptConfig(), gen)
        assert set(positives) <= set(phrase_of)
        assert len(prompt.phrases) == len(set(prompt.phrases)) == 80  # capped at 80 classes
        assert prompt.num_tokens <= 256
        for c, p in phrase_of.items():
            assert prompt.phrases[p] == CLASSES[c]
            assert decoded(tokenizer, prompt.caption, prompt.token_spans[p]) == CLASSES[c]
        assert prompt.caption.endswith(" .") and prompt.caption.count(" . ") == 79


def test_seeded_prompts_repeat_and_shuffle(tokenizer):
    def build(seed):
        gen = torch.Generator().manual_seed(seed)
        return detection_prompt(tokenizer, CLASSES, [0, 5], PromptConfig(max_classes=10), gen)[0].caption

    assert build(3) == build(3)
    captions = {build(s) for s in range(6)}
    assert len(captions) == 6  # negatives and order change with the seed
    firsts = {c.split(" . ")[0] for c in captions}
    assert len(firsts) > 1  # positives are not always first


def test_token_cap_binds_before_class_cap(tokenizer):
    cfg = PromptConfig(max_classes=80, max_tokens=40)
    prompt, phrase_of = detection_prompt(tokenizer, CLASSES, [10, 11], cfg, torch.Generator().manual_seed(0))
    assert {10, 11} <= set(phrase_of)
    assert len(tokenizer(prompt.caption)["input_ids"]) == prompt.num_tokens <= 40
    # Room for at least one more one-token class means the prompt was filled up to the cap.
    assert prompt.num_tokens >= 40 - 4


def test_num_negatives_and_unshuffled_order(tokenizer):
    cfg = PromptConfig(num_negatives=3, shuffle=False)
    prompt, phrase_of = detection_prompt(tokenizer, CLASSES, [20, 4], cfg)
    assert prompt.phrases == ["person", "bicycle", "car", "airplane", "elephant"]
    assert phrase_of == {0: 0, 1: 1, 2: 2, 4: 3, 20: 4}
    assert prompt.caption == "person . bicycle . car . airplane . elephant ."


def test_too_many_positives_keeps_what_fits(tokenizer):
    cfg = PromptConfig(max_classes=5)
    prompt, phrase_of = detection_prompt(tokenizer, CLASSES, list(range(12)), cfg, torch.Generator().manual_seed(1))
    assert len(phrase_of) == 5 and set(phrase_of) <= set(range(12))  # only positives, 5 of them


def test_class_token_counts(tokenizer):
    names = ["cat", "traffic light", "hippopotamus"]
    assert class_token_counts(tokenizer, names) == [len(tokenizer.tokenize(n)) for n in names] == [1, 2, 4]


def test_grounding_prompt_keeps_caption_and_spans(tokenizer):
    caption = "a man in a red shirt holds a small dog."
    spans = [[(2, 5)], [(11, 20)], [(29, 38)]]
    prompt, of = grounding_prompt(tokenizer, caption, spans)
    assert prompt.caption == caption and of == [0, 1, 2]
    assert prompt.phrases == ["man", "red shirt", "small dog"]
    for p, want in enumerate(["man", "red shirt", "small dog"]):
        assert decoded(tokenizer, caption, prompt.token_spans[p]) == want


def test_grounding_phrase_past_max_text_len_is_dropped(tokenizer):
    caption = " ".join(["word"] * 30) + " a cat."
    start = caption.index("cat")
    prompt, of = grounding_prompt(
        tokenizer, caption, [[(0, 4)], [(start, start + 3)]], PromptConfig(max_tokens=16, max_text_len=16)
    )
    assert of == [0, None] and prompt.token_spans == [[1]]


def test_token_map_rows():
    tm = token_map([[1, 2], [4], [300]], max_text_len=256)
    assert tm.shape == (3, 256) and tm.dtype == torch.bool
    assert tm[0].nonzero().flatten().tolist() == [1, 2]
    assert tm[1].nonzero().flatten().tolist() == [4]
    assert not tm[2].any()


def test_swap_left_right_moves_spans():
    caption = "the dog left of the cat. the right cup. leftover bright."
    spans = [[(4, 7)], [(8, 12)], [(29, 38)], [(40, 48)]]
    new, moved = swap_left_right(caption, spans)
    assert new == "the dog right of the cat. the left cup. leftover bright."
    assert [[new[s:e] for s, e in g] for g in moved] == [["dog"], ["right"], ["left cup"], ["leftover"]]
    back, spans_back = swap_left_right(new, moved)
    assert back == caption and spans_back == spans


def test_normalize_caption_spans():
    caption, spans = normalize_caption_spans("  A Red Circle left of a square", [[(2, 14)], [(25, 31)]])
    assert caption == "a red circle left of a square."
    assert [caption[s:e] for s, e in (spans[0][0], spans[1][0])] == ["a red circle", "square"]
    with pytest.raises(GdinoError):
        normalize_caption_spans("   ", [])


def test_prompt_config_validation():
    with pytest.raises(GdinoError):
        PromptConfig(max_classes=0)
    with pytest.raises(GdinoError):
        PromptConfig(max_tokens=300)
