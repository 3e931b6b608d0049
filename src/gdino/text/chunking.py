"""Splitting a long class list into captions that fit the text encoder.

The model reads at most ``max_text_len`` (256) tokens, [CLS] and [SEP] included; the official code
silently drops every class past that point. :func:`chunk_classes` instead packs the classes, in
order, into as few captions as the limit allows; callers run one pass per chunk and map results
back through ``ClassChunk.class_indices``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gdino.errors import PromptError
from gdino.text.captions import classes_to_caption, clean_class_name
from gdino.text.positive_map import token_spans_from_encoding


@dataclass(frozen=True)
class ClassChunk:
    """One caption's worth of classes.

    Attributes:
        class_indices: indices into the original class list, ascending.
        caption: ``"a . b ."`` as :func:`gdino.text.captions.classes_to_caption` builds it.
        token_spans: per class of the chunk, its token indices in the tokenized caption.
        char_spans: per class of the chunk, its ``(start, end)`` characters in ``caption``.
        num_tokens: tokens of the caption, [CLS] and [SEP] included (<= max_text_len).
    """

    class_indices: list[int]
    caption: str
    token_spans: list[list[int]]
    char_spans: list[tuple[int, int]]
    num_tokens: int


def chunk_classes(
    tokenizer, classes: Sequence[str], max_text_len: int = 256, max_classes: int | None = None
) -> list[ClassChunk]:
    """Greedily pack ``classes`` (in order) into captions of at most ``max_text_len`` tokens (and at
    most ``max_classes`` classes each, when given: mmdetection's fixed-size LVIS chunks).

    A list that fits gives one chunk whose caption equals ``classes_to_caption(classes)[0]``.
    Each class is tokenized once; a class costs its tokens plus one for its " ." separator.

    Raises:
        PromptError: an empty list, a bad name (see ``clean_class_name``), or one class too long
            to fit in a caption on its own.
    """
    if isinstance(classes, str):
        raise PromptError("classes must be a list of names, not one string")
    names = [clean_class_name(c) for c in classes]
    if not names:
        raise PromptError("the class list is empty: give at least one class name")
    if max_classes is not None and (not isinstance(max_classes, int) or max_classes < 1):
        raise PromptError(f"classes per prompt must be a positive int, got {max_classes!r}")
    budget = max_text_len - 2  # [CLS] and [SEP]
    counts = [len(ids) for ids in tokenizer(names, add_special_tokens=False)["input_ids"]]

    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(counts):
        if n == 0:
            raise PromptError(f"class {i} {classes[i]!r} has no tokens the model can read")
        if n + 1 > budget:
            raise PromptError(
                f"class {i} {classes[i]!r} is {n} tokens long; at most {budget - 1} fit in one "
                f"prompt of max_text_len={max_text_len}: shorten the name"
            )
        if used + n + 1 > budget or (max_classes is not None and len(current) >= max_classes):
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n + 1
    groups.append(current)

    chunks: list[ClassChunk] = []
    for group in groups:
        chunks.extend(_build(tokenizer, names, classes, group, max_text_len))
    return chunks


def _build(tokenizer, names, classes, group: list[int], max_text_len: int) -> list[ClassChunk]:
    """Tokenize one packed caption; split it in two if tokens were not additive after all."""
    caption, char_spans = classes_to_caption([names[i] for i in group])
    enc = tokenizer(caption)
    num_tokens = len(enc["input_ids"])
    if num_tokens > max_text_len:
        if len(group) == 1:
            i = group[0]
            raise PromptError(
                f"class {i} {classes[i]!r} needs {num_tokens} tokens as a caption, more than "
                f"max_text_len={max_text_len}: shorten the name"
            )
        half = len(group) // 2
        return _build(tokenizer, names, classes, group[:half], max_text_len) + _build(
            tokenizer, names, classes, group[half:], max_text_len
        )
    token_spans = token_spans_from_encoding(enc, caption, char_spans)
    return [ClassChunk(list(group), caption, token_spans, char_spans, num_tokens)]
