"""Prompts as the detector runs them: a class list or a caption, split into chunks that fit.

:func:`build_prompt` turns what the user gave into a :class:`Prompt`:

- a list of class names -> ``mode="classes"``: the classes are packed into as few captions
  (``"a . b ."``) as ``max_text_len`` allows, each chunk with a normalized positive map;
- a string -> ``mode="phrases"``: the official caption (lower-cased, "." appended). A caption too
  long for the text encoder is split at its "." separators into chunks the same way, instead of
  being cut silently. The prompt's phrases become its ``class_names``.

Every class (or phrase) lands in exactly one chunk; ``class_indices`` / ``segment_classes`` map a
chunk's local rows back to global ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from gdino.errors import PromptError
from gdino.text.captions import normalize_caption, split_phrases
from gdino.text.chunking import chunk_classes
from gdino.text.positive_map import phrase_segments, positive_map


@dataclass(frozen=True, eq=False)
class PromptChunk:
    """One caption (one text-encoder pass) of a prompt.

    Attributes:
        caption: the caption fed to the tokenizer.
        class_indices: classes mode: global class id of each positive-map row.
        positive_map: classes mode: ``[C_chunk, max_text_len]`` rows summing to 1; else None.
        segment_classes: phrases mode: per ``phrase_segments`` entry of the caption, the global
            phrase id (-1 for empty segments, e.g. the one before [SEP]).
    """

    caption: str
    class_indices: tuple[int, ...] = ()
    positive_map: Tensor | None = None
    segment_classes: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Prompt:
    """A prompt ready to run. ``key`` identifies it (equal keys give equal results)."""

    mode: str  # "classes" or "phrases"
    class_names: tuple[str, ...]
    chunks: tuple[PromptChunk, ...]
    #: classes mode: at most this many classes per chunk, and top-k decoding per chunk
    #: (mmdetection's ``chunked_size``); None: chunks packed up to ``max_text_len`` tokens
    chunk_size: int | None = None

    @property
    def key(self) -> tuple:
        return (self.mode, self.class_names, tuple(c.caption for c in self.chunks), self.chunk_size)

    @property
    def text(self) -> str:
        """The captions, joined (for logs and outputs)."""
        return " ".join(c.caption for c in self.chunks)


def build_prompt(
    tokenizer, prompt_or_classes: str | Sequence[str] | Prompt, max_text_len: int = 256, max_classes: int | None = None
) -> Prompt:
    """A :class:`Prompt` from a caption (str) or a class list (sequence of str); ``max_classes``
    caps the classes per chunk (default: as many as fit in ``max_text_len`` tokens).

    Raises:
        PromptError: empty or punctuation-only prompt, empty class list, bad class names.
    """
    if isinstance(prompt_or_classes, Prompt):
        return prompt_or_classes
    if tokenizer is None:
        raise PromptError("the model has no tokenizer; load it with gdino.load_model")
    if isinstance(prompt_or_classes, str):
        return _phrase_prompt(tokenizer, prompt_or_classes, max_text_len)
    if isinstance(prompt_or_classes, (list, tuple)):
        if not all(isinstance(c, str) for c in prompt_or_classes):
            bad = next(c for c in prompt_or_classes if not isinstance(c, str))
            raise PromptError(f"class names must be strings, got {type(bad).__name__}: {bad!r}")
        return _class_prompt(tokenizer, list(prompt_or_classes), max_text_len, max_classes)
    raise PromptError(
        f"a prompt must be a string (caption) or a list of class names, got {type(prompt_or_classes).__name__}"
    )


def _class_prompt(tokenizer, classes: list[str], max_text_len: int, max_classes: int | None = None) -> Prompt:
    chunks = []
    for ch in chunk_classes(tokenizer, classes, max_text_len, max_classes):
        pm = positive_map(ch.token_spans, max_text_len, normalize=True)
        chunks.append(PromptChunk(ch.caption, tuple(ch.class_indices), pm))
    return Prompt("classes", class_names_of(classes), tuple(chunks), max_classes)


def class_names_of(classes: Sequence[str]) -> tuple[str, ...]:
    """The ``class_names`` a class-list :class:`Prompt` reports (whitespace collapsed); no tokenizer needed."""
    return tuple(" ".join(c.split()) for c in classes)


def _phrase_prompt(tokenizer, text: str, max_text_len: int) -> Prompt:
    caption = normalize_caption(text)
    if len(tokenizer(caption)["input_ids"]) <= max_text_len:
        captions = [caption]
    else:
        phrases = [p for p, _ in split_phrases(caption)]
        try:
            captions = [ch.caption for ch in chunk_classes(tokenizer, phrases, max_text_len)]
        except PromptError as e:
            raise PromptError(f"prompt too long for one pass and cannot be split at '.': {e}") from e
    names: list[str] = []
    chunks = []
    for cap in captions:
        enc = tokenizer(cap, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        seg_classes = []
        for start, end in phrase_segments(ids):
            if end > start:
                names.append(cap[offsets[start][0] : offsets[end - 1][1]].strip())
                seg_classes.append(len(names) - 1)
            else:
                seg_classes.append(-1)
        chunks.append(PromptChunk(cap, segment_classes=tuple(seg_classes)))
    return Prompt("phrases", tuple(names), tuple(chunks))
