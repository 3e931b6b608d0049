"""Decoding on hand-made logits: classes mode, top-k, chunk merging, official phrases."""

from __future__ import annotations

import math

import pytest
import torch

from gdino.infer.decode import (
    class_scores,
    decode_phrases,
    select_per_query,
    select_topk,
    select_topk_chunks,
)
from gdino.text.positive_map import positive_map

NEG = -math.inf


def logit(p: float) -> float:
    """Inverse sigmoid, so tests can be written in probabilities."""
    if p <= 0:
        return NEG
    return math.log(p / (1 - p))


def logits_from_probs(rows: list[list[float]], width: int = 16) -> torch.Tensor:
    out = torch.full((len(rows), width), NEG)
    for q, row in enumerate(rows):
        out[q, : len(row)] = torch.tensor([logit(p) for p in row])
    return out


# [CLS] a cat . remote control . [SEP]
CAPTION_IDS = [101, 1037, 4937, 1012, 6556, 2491, 1012, 102]


class TestClassesMode:
    def test_scores_are_mean_token_probabilities(self):
        pm = positive_map([[1, 2], [4, 5]], max_text_len=16)
        lg = logits_from_probs([[0.1, 0.2, 0.8, 0.1, 0.6, 0.4, 0.1, 0.1]])
        sc = class_scores(lg, pm)
        assert sc.shape == (1, 2)
        assert sc[0, 0].item() == pytest.approx((0.2 + 0.8) / 2, abs=1e-6)
        assert sc[0, 1].item() == pytest.approx((0.6 + 0.4) / 2, abs=1e-6)

    def test_padding_columns_contribute_zero_and_batch_dims_work(self):
        pm = positive_map([[1], [3]], max_text_len=256)
        lg = logits_from_probs([[0.5, 0.9, 0.5, 0.7]], width=8)  # fewer columns than the map
        sc = class_scores(lg[None], pm)
        assert sc.shape == (1, 1, 2)
        assert sc[0, 0].tolist() == pytest.approx([0.9, 0.7], abs=1e-6)

    def test_each_query_takes_its_argmax_class_no_merged_labels(self):
        pm = positive_map([[1, 2], [4, 5]], max_text_len=16)
        lg = logits_from_probs(
            [
                [0, 0.9, 0.9, 0, 0.8, 0.8],  # both classes high: one label, the best
                [0, 0.1, 0.1, 0, 0.5, 0.7],  # class 1
                [0, 0.3, 0.3, 0, 0.2, 0.2],  # below threshold
                [0, 0.6, 0.2, 0, 0.4, 0.4],  # exactly 0.4 for both: strict > drops it
            ]
        )
        sel = select_per_query(class_scores(lg, pm), threshold=0.4)
        assert sel.queries.tolist() == [0, 1]
        assert sel.class_ids.tolist() == [0, 1]
        assert sel.scores.tolist() == pytest.approx([0.9, 0.6], abs=1e-6)

    def test_empty_class_matrix(self):
        sel = select_per_query(torch.zeros(5, 0), 0.1)
        assert len(sel) == 0

    def test_topk_is_query_major_and_sorted(self):
        scores = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.7]])
        sel = select_topk(scores, k=4)
        assert sel.scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.3])
        assert sel.queries.tolist() == [0, 1, 1, 0]
        assert sel.class_ids.tolist() == [1, 0, 2, 2]
        assert len(select_topk(scores, k=100)) == 6  # k larger than Q*C

    def test_topk_over_chunks_matches_brute_force(self):
        gen = torch.Generator().manual_seed(0)
        a, b = torch.rand(6, 3, generator=gen), torch.rand(6, 2, generator=gen)
        cls_a, cls_b = [4, 0, 2], [1, 3]
        sel = select_topk_chunks([a, b], [cls_a, cls_b], k=7)
        brute = sorted(
            [(float(a[q, j]), 0, q, cls_a[j]) for q in range(6) for j in range(3)]
            + [(float(b[q, j]), 1, q, cls_b[j]) for q in range(6) for j in range(2)],
            reverse=True,
        )[:7]
        assert sel.scores.tolist() == pytest.approx([s for s, *_ in brute])
        assert sel.chunks.tolist() == [c for _, c, _, _ in brute]
        assert sel.queries.tolist() == [q for _, _, q, _ in brute]
        assert sel.class_ids.tolist() == [k for *_, k in brute]

    def test_single_chunk_topk_equals_plain_topk(self):
        s = torch.rand(10, 4, generator=torch.Generator().manual_seed(1))
        one = select_topk_chunks([s], [[0, 1, 2, 3]], k=9)
        plain = select_topk(s, k=9)
        assert torch.equal(one.queries, plain.queries) and torch.equal(one.class_ids, plain.class_ids)


class TestPhraseMode:
    def test_official_thresholds_and_remove_combined(self, tokenizer):
        #           CLS   a    cat  .    remote control .   SEP
        rows = [
            [0.1, 0.2, 0.9, 0.3, 0.5, 0.1, 0.2, 0.1],  # cat, with "remote" above text threshold
            [0.1, 0.1, 0.2, 0.1, 0.2, 0.3, 0.1, 0.1],  # max 0.3 <= 0.35: dropped
            [0.1, 0.1, 0.1, 0.1, 0.6, 0.3, 0.9, 0.1],  # peak on the "." closing "remote control"
            [0.9, 0.3, 0.6, 0.1, 0.1, 0.1, 0.1, 0.8],  # peak on [CLS]: falls back to the best word
            [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.35],  # exactly 0.35: strict > drops it
        ]
        lg = logits_from_probs(rows)
        out = decode_phrases(lg, CAPTION_IDS, tokenizer, 0.35, 0.25, remove_combined=True)
        assert out.queries.tolist() == [0, 2, 3]
        assert out.labels == ["cat", "remote control", "a cat"]
        assert out.phrase_ids.tolist() == [0, 1, 0]
        # the score is the max over every column, specials included (official)
        assert out.scores.tolist() == pytest.approx([0.9, 0.9, 0.9], abs=1e-6)

    def test_without_remove_combined_tokens_merge_like_the_official(self, tokenizer):
        lg = logits_from_probs([[0.1, 0.2, 0.9, 0.3, 0.5, 0.1, 0.2, 0.9]])
        out = decode_phrases(lg, CAPTION_IDS, tokenizer, 0.35, 0.25, remove_combined=False)
        # official would give "cat remote" plus "[SEP]"; specials never enter a label here
        assert out.labels == ["cat remote"]

    def test_word_pieces_are_merged(self, tokenizer):
        ids = tokenizer("hairdryer . toothbrush .")["input_ids"]
        probs = [0.0] * len(ids)
        probs[1:4] = [0.7, 0.8, 0.6]  # hair ##dry ##er
        probs[5:7] = [0.3, 0.2]  # tooth (passes text threshold, other phrase) ##brush
        out = decode_phrases(logits_from_probs([probs]), ids, tokenizer, 0.35, 0.25)
        assert out.labels == ["hairdryer"]
        out = decode_phrases(logits_from_probs([probs]), ids, tokenizer, 0.35, 0.25, remove_combined=False)
        assert out.labels == ["hairdryer tooth"]

    def test_no_token_above_text_threshold_takes_the_whole_best_phrase(self, tokenizer):
        # the official code labels these "" (no token passes text_threshold)
        lg = logits_from_probs(
            [
                [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.5],  # only [SEP] is high: best word "a" -> phrase 0 (ties: first)
                [0.1, 0.1, 0.1, 0.1, 0.2, 0.15, 0.1, 0.5],  # best word "remote" (0.2 < 0.25) -> phrase 1
            ]
        )
        out = decode_phrases(lg, CAPTION_IDS, tokenizer, 0.35, 0.25)
        assert out.labels == ["a cat", "remote control"]
        assert out.phrase_ids.tolist() == [0, 1]

    def test_nothing_kept(self, tokenizer):
        out = decode_phrases(torch.full((3, 16), -5.0), CAPTION_IDS, tokenizer)
        assert len(out) == 0 and out.labels == []
