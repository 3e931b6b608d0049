"""Which tokens belong to which class or phrase.

- :func:`char_spans_to_token_spans`: character spans in a caption -> token indices (with [CLS]
  at index 0), the way the official ``create_positive_map_from_span`` finds them.
- :func:`positive_map`: token indices -> a ``[C, max_text_len]`` map; with ``normalize`` each row
  sums to 1, so ``positive_map @ sigmoid(logits)ᵀ`` averages a class's token scores.
- :func:`phrase_segments`: the token ranges between delimiters, for restricting a detection's
  label to one phrase (official ``remove_combined``).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import TypeGuard, cast

import torch
from torch import Tensor

from gdino.errors import PromptError

Span = tuple[int, int]

#: Delimiters of the official ``remove_combined`` ([CLS], [SEP], "."; "?" is not one there).
SEGMENT_SPECIAL_IDS = (101, 102, 1012)


def char_spans_to_token_spans(tokenizer, caption: str, char_spans: Sequence[Span | Sequence[Span]]) -> list[list[int]]:
    """Token indices covered by each character span of ``caption``.

    Args:
        tokenizer: a fast tokenizer (offsets needed).
        caption: the caption exactly as it is tokenized.
        char_spans: per class, one ``(start, end)`` span (end exclusive) or a list of them.

    Returns:
        Per class, the sorted token indices (into the tokenized caption, [CLS] = 0) from the
        first token of each span to its last. As the official code, a start or end that falls on
        a space tries the next one or two characters inward.

    Raises:
        PromptError: a span that covers no token (out of range, or only spaces).
    """
    return token_spans_from_encoding(tokenizer(caption), caption, char_spans)


def token_spans_from_encoding(enc, caption: str, char_spans: Sequence[Span | Sequence[Span]]) -> list[list[int]]:
    """:func:`char_spans_to_token_spans` given ``enc = tokenizer(caption)`` (tokenize once)."""
    n = len(caption)

    def token_at(char: int) -> int | None:
        return enc.char_to_token(char) if 0 <= char < n else None

    result: list[list[int]] = []
    for k, item in enumerate(char_spans):
        spans: list[Span] = [item] if _is_span(item) else list(cast(Sequence[Span], item))
        tokens: set[int] = set()
        for beg, end in spans:
            first = _first_found(token_at, (beg, beg + 1, beg + 2))
            last = _first_found(token_at, (end - 1, end - 2, end - 3))
            if first is None or last is None or last < first:
                raise PromptError(
                    f"span {k} ({beg}, {end}) = {caption[max(beg, 0) : end]!r} covers no token "
                    f"of caption {_short(caption)!r}"
                )
            tokens.update(range(first, last + 1))
        result.append(sorted(tokens))
    return result


def positive_map(
    token_spans: Sequence[Sequence[int]],
    max_text_len: int = 256,
    normalize: bool = True,
    eps: float = 0.0,
) -> Tensor:
    """``[C, max_text_len]`` float map: row c is 1 at class c's token indices.

    Args:
        token_spans: per class, token indices (from :func:`char_spans_to_token_spans`).
        normalize: divide each row by its sum (+ ``eps``), so rows sum to 1. The official
            ``create_positive_map_from_span`` uses ``eps=1e-6``; 0 gives exact sums.

    Raises:
        PromptError: a class with no tokens, or whose tokens all lie at or past ``max_text_len``
            (it would silently never be detected; split the prompt instead).
    """
    pm = torch.zeros(len(token_spans), max_text_len, dtype=torch.float32)
    for c, tokens in enumerate(token_spans):
        kept = [t for t in tokens if 0 <= t < max_text_len]
        if not kept:
            why = "has no tokens" if not tokens else f"starts past max_text_len={max_text_len}"
            raise PromptError(f"class {c} {why}: it cannot be detected; split the class list into several prompts")
        pm[c, kept] = 1.0
    if normalize:
        pm = pm / (pm.sum(-1, keepdim=True) + eps)
    return pm


def phrase_segments(input_ids: Tensor | Sequence[int], special_ids: Sequence[int] = SEGMENT_SPECIAL_IDS) -> list[Span]:
    """Token ranges ``(start, end)`` (end exclusive) between consecutive delimiters of one caption.

    ``end`` is the index of the delimiter that closes the phrase, so a token ``t`` belongs to
    segment ``(start, end)`` iff ``start <= t < end``, and a logit peak *on* a delimiter belongs
    to the segment it closes (``start <= t <= end``), as in the official ``remove_combined``.
    Ranges may be empty (``". ."``).
    ``[CLS] cat . remote control . [SEP]`` -> ``[(1, 2), (3, 5), (6, 6)]``.

    Args:
        input_ids: ``[L]`` ids of one caption (padding after [SEP] is ignored).
    """
    ids = input_ids.tolist() if isinstance(input_ids, Tensor) else list(input_ids)
    special = set(int(i) for i in special_ids)
    delims = [i for i, t in enumerate(ids) if t in special]
    return [(a + 1, b) for a, b in zip(delims[:-1], delims[1:], strict=True)]


def _is_span(item: Span | Sequence[Span]) -> TypeGuard[Span]:
    return len(item) == 2 and all(isinstance(v, Integral) for v in item)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_found(lookup, chars) -> int | None:
    for ch in chars:
        tok = lookup(ch)
        if tok is not None:
            return tok
    return None
