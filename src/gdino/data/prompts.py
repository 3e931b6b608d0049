"""Training prompts: which classes or phrases a training caption holds, and their token spans.

- Detection records: the image's classes (positives) plus randomly sampled absent classes
  (negatives), capped at ``PromptConfig.max_classes`` classes or ``max_tokens`` tokens, whichever
  comes first, shuffled and joined as ``"a . b ."`` (:func:`detection_prompt`).
- Grounding records: the caption itself; each phrase keeps its character spans
  (:func:`grounding_prompt`).

Random choices use the ``generator`` passed in (the global torch RNG when None), so a prompt is
reproducible from a seed. Captions are lower-cased as the official preprocessing does; the
helpers here keep character spans right when captions change (:func:`normalize_caption_spans`,
:func:`swap_left_right`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gdino.errors import GdinoError, PromptError
from gdino.text.captions import classes_to_caption
from gdino.text.positive_map import token_spans_from_encoding

Span = tuple[int, int]


@dataclass(frozen=True)
class PromptConfig:
    """How training prompts are built.

    Attributes:
        max_classes: at most this many classes in a detection prompt (positives first).
        max_tokens: at most this many tokens in a detection prompt, [CLS] and [SEP] included.
        num_negatives: absent classes to add; None = as many as the two caps allow.
        shuffle: shuffle the class order and sample negatives at random (False: no randomness,
            negatives taken in class order, the prompt in class order: for validation).
        max_text_len: token columns of ``Target.token_map`` (the model's text length).
    """

    max_classes: int = 80
    max_tokens: int = 256
    num_negatives: int | None = None
    shuffle: bool = True
    max_text_len: int = 256

    def __post_init__(self) -> None:
        if self.max_classes < 1:
            raise GdinoError(f"max_classes must be at least 1, got {self.max_classes}")
        if not 4 <= self.max_tokens <= self.max_text_len:
            raise GdinoError(f"max_tokens must be in 4..max_text_len={self.max_text_len}, got {self.max_tokens}")
        if self.num_negatives is not None and self.num_negatives < 0:
            raise GdinoError(f"num_negatives must be >= 0 or None, got {self.num_negatives}")


@dataclass
class Prompt:
    """A built prompt.

    Attributes:
        caption: the text given to the model.
        phrases: class names or grounding phrases, in caption order.
        token_spans: per phrase, its token indices in the tokenized caption ([CLS] = 0), all
            ``< max_text_len``.
        num_tokens: tokens of the caption, [CLS] and [SEP] included.
    """

    caption: str
    phrases: list[str]
    token_spans: list[list[int]]
    num_tokens: int


def class_token_counts(tokenizer, class_names: Sequence[str]) -> list[int]:
    """Tokens of each class name alone (no special tokens): the budget each class costs, minus 1."""
    if not class_names:
        return []
    return [len(ids) for ids in tokenizer(list(class_names), add_special_tokens=False)["input_ids"]]


def detection_prompt(
    tokenizer,
    class_names: Sequence[str],
    positives: Sequence[int],
    cfg: PromptConfig = PromptConfig(),
    generator: torch.Generator | None = None,
    token_counts: Sequence[int] | None = None,
) -> tuple[Prompt, dict[int, int]]:
    """The caption for an image whose boxes have the classes ``positives``.

    Args:
        class_names: all classes of the dataset (cleaned names).
        positives: class indices present in the image (repeats allowed).
        token_counts: ``class_token_counts(tokenizer, class_names)``, to skip re-tokenizing.

    Returns:
        ``(prompt, phrase_of)`` where ``phrase_of[class index] = index in prompt.phrases``. Positives
        that did not fit the caps are absent from ``phrase_of`` (their boxes must be dropped); when
        any positive fits, at least one is kept.
    """
    counts = list(token_counts) if token_counts is not None else class_token_counts(tokenizer, class_names)
    pos = sorted(set(int(c) for c in positives))
    if any(not 0 <= c < len(class_names) for c in pos):
        raise GdinoError(f"class index out of range 0..{len(class_names) - 1} in {pos}")
    if cfg.shuffle:
        pos = [pos[i] for i in torch.randperm(len(pos), generator=generator).tolist()]
    budget = cfg.max_tokens - 2  # [CLS], [SEP]
    chosen: list[int] = []
    used = 0
    for c in pos:
        if len(chosen) < cfg.max_classes and used + counts[c] + 1 <= budget:
            chosen.append(c)
            used += counts[c] + 1
    n_pos = len(chosen)

    want = cfg.max_classes - n_pos if cfg.num_negatives is None else min(cfg.num_negatives, cfg.max_classes - n_pos)
    if want > 0:
        present = set(pos)
        if cfg.shuffle:
            candidates = [c for c in torch.randperm(len(class_names), generator=generator).tolist() if c not in present]
        else:
            candidates = [c for c in range(len(class_names)) if c not in present]
        for c in candidates:
            if want == 0 or used + 2 > budget:
                break
            if used + counts[c] + 1 <= budget:
                chosen.append(c)
                used += counts[c] + 1
                want -= 1
    if not chosen:
        raise PromptError(f"no class fits a prompt of max_tokens={cfg.max_tokens}; raise max_tokens")

    order = (
        [chosen[i] for i in torch.randperm(len(chosen), generator=generator).tolist()]
        if cfg.shuffle
        else sorted(chosen)
    )
    while True:
        caption, char_spans = classes_to_caption([class_names[c] for c in order])
        enc = tokenizer(caption)
        num_tokens = len(enc["input_ids"])
        if num_tokens <= cfg.max_tokens or len(order) == 1:
            break
        # Token counts were not additive (rare): drop a negative, else the last positive.
        negatives = [c for c in order if c not in chosen[:n_pos]]
        order.remove(negatives[-1] if negatives else order[-1])
    spans = token_spans_from_encoding(enc, caption, char_spans)
    prompt = Prompt(caption, [class_names[c] for c in order], spans, num_tokens)
    return prompt, {c: i for i, c in enumerate(order)}


def grounding_prompt(
    tokenizer, caption: str, phrase_spans: Sequence[Sequence[Span]], cfg: PromptConfig = PromptConfig()
) -> tuple[Prompt, list[int | None]]:
    """A grounding caption as its own prompt.

    Returns:
        ``(prompt, phrase_of)``: ``phrase_of[k]`` is phrase k's index in ``prompt.phrases``, or None
        when its span covers no token before ``max_text_len`` (its boxes must be dropped).
    """
    enc = tokenizer(caption)
    phrases: list[str] = []
    spans: list[list[int]] = []
    phrase_of: list[int | None] = []
    for char_spans in phrase_spans:
        try:
            tokens = token_spans_from_encoding(enc, caption, [list(char_spans)])[0]
        except PromptError:
            tokens = []
        tokens = [t for t in tokens if t < cfg.max_text_len]
        if not tokens:
            phrase_of.append(None)
            continue
        phrase_of.append(len(phrases))
        phrases.append(" ".join(dict.fromkeys(caption[s:e] for s, e in char_spans)))
        spans.append(tokens)
    num_tokens = min(len(enc["input_ids"]), cfg.max_text_len)
    return Prompt(caption, phrases, spans, num_tokens), phrase_of


def token_map(token_spans: Sequence[Sequence[int]], max_text_len: int = 256) -> Tensor:
    """``[P, max_text_len]`` bool: row p is True at phrase p's tokens."""
    out = torch.zeros(len(token_spans), max_text_len, dtype=torch.bool)
    rows = [p for p, tokens in enumerate(token_spans) for t in tokens if 0 <= t < max_text_len]
    cols = [t for tokens in token_spans for t in tokens if 0 <= t < max_text_len]
    out[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = True
    return out


def normalize_caption_spans(caption: str, phrase_spans: Sequence[Sequence[Span]]) -> tuple[str, list[list[Span]]]:
    """Official caption normalization (lower-case, strip, end with ".") with spans moved along.

    Raises:
        GdinoError: an empty caption.
    """
    lowered = caption.lower()
    if len(lowered) == len(caption):  # a few Unicode letters change length when lower-cased
        caption = lowered
    lead = len(caption) - len(caption.lstrip())
    text = caption.strip()
    if not text:
        raise GdinoError("empty grounding caption")
    if not text.endswith("."):
        text += "."
    n = len(text)
    out = [[(min(max(s - lead, 0), n), min(max(e - lead, 0), n)) for s, e in spans] for spans in phrase_spans]
    return text, out


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(caption: str, phrase_spans: Sequence[Sequence[Span]]) -> tuple[str, list[list[Span]]]:
    """Swap the words "left" and "right" (for a horizontally flipped image), spans kept on their text.

    A span boundary inside a swapped word moves to that word's new start (for a start) or end (for
    an end), so a span that covered "left" covers "right" afterwards.
    """
    pieces: list[str] = []
    edits: list[tuple[int, int, int, int]] = []  # old start, old end, new start, new end
    pos = shift = 0
    for m in _LEFT_RIGHT.finditer(caption):
        word = m.group(0)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            new = new.upper()
        elif word[0].isupper():
            new = new.capitalize()
        pieces.append(caption[pos : m.start()])
        pieces.append(new)
        edits.append((m.start(), m.end(), m.start() + shift, m.start() + shift + len(new)))
        shift += len(new) - len(word)
        pos = m.end()
    if not edits:
        return caption, [list(spans) for spans in phrase_spans]
    pieces.append(caption[pos:])

    def move(p: int, is_end: bool) -> int:
        delta = 0
        for a, b, na, nb in edits:
            if p <= a:
                return p + delta
            if p < b or (p == b and is_end):
                return nb if is_end else na
            delta = nb - b
        return p + delta

    spans = [[(move(s, False), move(e, True)) for s, e in group] for group in phrase_spans]
    return "".join(pieces), spans
