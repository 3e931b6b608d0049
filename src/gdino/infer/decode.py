"""Turning the model's token logits into detections: pure functions on tensors.

Two modes:

- **classes** (a class list was given): every class has a normalized positive map (its token
  columns, each row summing to 1), and a query's score for a class is the mean of its token
  probabilities, ``sigmoid(logits) @ positive_mapᵀ`` (the official COCO-evaluation projection).
  :func:`select_per_query` gives each query its best class and keeps it above a threshold (one
  label per box, never "cat dog"); :func:`select_topk` keeps the best k (query, class) pairs, as
  the official evaluation post-processor does (a query may appear with several classes).
- **phrases** (free text): :func:`decode_phrases` is the official ``predict``: a query is kept
  when its highest token probability (over every column, specials included) exceeds
  ``box_threshold``; its label is made of the tokens above ``text_threshold``. With
  ``remove_combined`` (default) the label is restricted to the phrase holding the query's peak
  token, so tokens of different phrases are never merged. [CLS], [SEP] and "." never enter a label.

Inputs are single images: ``logits [Q, T]`` (raw, -inf at padding columns), boxes ``[Q, 4]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gdino.text.positive_map import SEGMENT_SPECIAL_IDS, phrase_segments

#: Token ids that never appear in a phrase label: [CLS], [SEP], ".", "?".
LABEL_EXCLUDED_IDS = (101, 102, 1012, 1029)


def token_probs(logits: Tensor) -> Tensor:
    """``sigmoid`` in float32 (padding columns at -inf become exactly 0)."""
    return logits.float().sigmoid()


def class_scores(logits: Tensor, positive_map: Tensor) -> Tensor:
    """Per-class scores ``[..., Q, C]``: token probabilities projected on normalized positive maps.

    Args:
        logits: ``[..., Q, T]`` raw token logits.
        positive_map: ``[C, T']`` rows summing to 1 (``gdino.text.positive_map.positive_map``);
            only the first ``min(T, T')`` columns are used (the rest must be zero).
    """
    probs = token_probs(logits)
    t = min(probs.shape[-1], positive_map.shape[-1])
    pm = positive_map[:, :t].to(device=probs.device, dtype=probs.dtype)
    return probs[..., :t] @ pm.transpose(0, 1)


@dataclass
class Selection:
    """Which queries were kept, with which class and score (1-D tensors of equal length N).

    ``chunks`` tells, for chunked prompts, which pass (chunk) each entry came from (else zeros).
    """

    queries: Tensor
    class_ids: Tensor
    scores: Tensor
    chunks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.queries.numel())


def select_per_query(scores: Tensor, threshold: float) -> Selection:
    """Classes mode: each query takes its argmax class; keep it if that score > ``threshold``.

    Args:
        scores: ``[Q, C]`` from :func:`class_scores`.
    Returns:
        A :class:`Selection` in query order (ties go to the lower class index).
    """
    if scores.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=scores.device)
        return Selection(empty, empty.clone(), scores.new_zeros(0))
    best, cls = scores.max(dim=-1)
    keep = (best > threshold).nonzero().flatten()
    return Selection(keep, cls[keep], best[keep])


def select_topk(scores: Tensor, k: int = 300) -> Selection:
    """Evaluation mode: the ``k`` best (query, class) pairs over ``scores [Q, C]``, best first.

    Flattened query-major as the official ``PostProcessCocoGrounding``: pair index ``q * C + c``.
    """
    q, c = scores.shape
    k = min(int(k), q * c)
    top, flat = scores.reshape(-1).topk(k)
    return Selection(flat // c, flat % c, top)


def select_topk_chunks(scores: Sequence[Tensor], class_indices: Sequence[Sequence[int]], k: int = 300) -> Selection:
    """:func:`select_topk` across several chunked passes, one ``[Q_i, C_i]`` score matrix each.

    ``class_indices[i][j]`` is the global class id of column j of chunk i. The result's
    ``chunks`` says which pass each (query, class) pair came from; ``class_ids`` are global.
    """
    if len(scores) != len(class_indices):
        raise ValueError("one class index list per score matrix is needed")
    flat = torch.cat([s.reshape(-1) for s in scores])
    k = min(int(k), flat.numel())
    top, idx = flat.topk(k)
    sizes = torch.tensor([s.numel() for s in scores], device=idx.device)
    starts = torch.cumsum(sizes, 0) - sizes
    chunk = torch.searchsorted(torch.cumsum(sizes, 0), idx, right=True)
    local = idx - starts[chunk]
    ncls = torch.tensor([s.shape[1] for s in scores], device=idx.device)[chunk]
    query = local // ncls
    # global class id of every flattened (query, column) entry, chunk after chunk
    gcls = torch.cat(
        [torch.as_tensor(list(ci), dtype=torch.long).repeat(s.shape[0]) for s, ci in zip(scores, class_indices)]
    ).to(idx.device)
    class_ids = gcls[idx]
    return Selection(query, class_ids, top, chunk)


@dataclass
class PhraseSelection:
    """Phrase-mode result: kept queries, their scores, labels and phrase (segment) indices.

    ``phrase_ids[i]`` indexes the caption's phrases (``phrase_segments``) that the label was
    taken from; -1 when no phrase could be chosen.
    """

    queries: Tensor
    scores: Tensor
    labels: list[str]
    phrase_ids: Tensor

    def __len__(self) -> int:
        return int(self.queries.numel())


def decode_phrases(
    logits: Tensor,
    input_ids: Tensor | Sequence[int],
    tokenizer,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    remove_combined: bool = True,
    excluded_ids: Sequence[int] = LABEL_EXCLUDED_IDS,
    segment_ids: Sequence[int] = SEGMENT_SPECIAL_IDS,
) -> PhraseSelection:
    """Official token-threshold phrase decoding of one image.

    Args:
        logits: ``[Q, T]`` raw logits (T >= number of caption tokens; extra columns -inf).
        input_ids: ``[L]`` ids of the caption ([CLS] ... [SEP], padding ignored).
        tokenizer: has ``decode(list[int]) -> str`` (merges word pieces).
        remove_combined: keep only tokens of the phrase holding the peak token.

    Segment rule: a query's peak token picks the phrase it lies in, or the phrase it closes
    when it is a "." (the official ``bisect_left`` rule). When the peak is on [CLS], [SEP] or an
    empty phrase (where the official code yields an empty or wrapped-around label), the phrase of
    the highest *word* token is used instead. A query with no token above ``text_threshold``
    (the official code labels it ``""``) is labeled with that whole phrase.
    """
    ids = input_ids.tolist() if isinstance(input_ids, Tensor) else [int(i) for i in input_ids]
    probs = token_probs(logits)
    n = min(len(ids), probs.shape[-1])
    best, _ = probs.max(dim=-1)
    keep = (best > box_threshold).nonzero().flatten()
    segments = phrase_segments(ids[:n], segment_ids)
    excluded = set(int(i) for i in excluded_ids)
    word = torch.tensor([i not in excluded for i in ids[:n]], dtype=torch.bool, device=probs.device)

    labels: list[str] = []
    phrase_ids: list[int] = []
    for q in keep.tolist():
        p = probs[q, :n]
        seg = _segment_of(int(p.argmax()), segments)
        if seg < 0 or segments[seg][0] >= segments[seg][1]:
            if word.any():
                seg = _segment_of(int(torch.where(word, p, -1.0).argmax()), segments)
        passing = (p > text_threshold) & word
        if remove_combined:
            inside = torch.zeros_like(passing)
            if seg >= 0:
                start, end = segments[seg]
                inside[start:end] = True
            passing &= inside
        tokens = [ids[t] for t in passing.nonzero().flatten().tolist()]
        if not tokens and seg >= 0:  # no token over text_threshold: the query's best phrase, whole
            start, end = segments[seg]
            tokens = [ids[t] for t in range(start, end) if word[t]]
        labels.append(_clean_label(tokenizer.decode(tokens)) if tokens else "")
        phrase_ids.append(seg)
    return PhraseSelection(keep, best[keep], labels, torch.tensor(phrase_ids, dtype=torch.long, device=probs.device))


def _segment_of(token: int, segments: Sequence[tuple[int, int]]) -> int:
    """Index of the segment containing ``token`` (a closing delimiter counts), else -1."""
    for i, (start, end) in enumerate(segments):
        if start <= token <= end:
            return i
    return -1


def _clean_label(text: str) -> str:
    return " ".join(text.replace(".", "").split())
