"""Prompt strings: normalizing free text, class lists <-> captions, splitting captions into phrases.

Grounding DINO reads a caption as phrases separated by " ." (the "." tells the model that the
names around it are independent). Everything here is plain string work with character spans
``(start, end)`` (end exclusive) into the returned caption.
"""

from __future__ import annotations

from collections.abc import Sequence

from gdino.errors import PromptError

#: Characters that end a sub-sentence for the model ("." and "?"); not allowed in class names.
SEPARATORS = (".", "?")


def normalize_caption(text: str) -> str:
    """Official caption preprocessing: lower-case, strip, append "." if it does not end with one.

    ``"A Cat . a dog"`` -> ``"a cat . a dog."``.

    Raises:
        PromptError: empty, whitespace-only or punctuation-only text (nothing to look for).
    """
    if not isinstance(text, str):
        raise PromptError(f"a prompt must be a string, got {type(text).__name__}")
    caption = text.lower().strip()
    if not any(ch.isalnum() for ch in caption):
        raise PromptError(f"prompt {text!r} names nothing: give words such as 'a cat . a dog'")
    if not caption.endswith("."):
        caption += "."
    return caption


def clean_class_name(name: str) -> str:
    """A class name as it appears in a caption: lower-cased, whitespace stripped and collapsed.

    Raises:
        PromptError: not a string, empty, or containing "." / "?" (they would split it in two).
    """
    if not isinstance(name, str):
        raise PromptError(f"class names must be strings, got {type(name).__name__}: {name!r}")
    cleaned = " ".join(name.lower().split())
    if not cleaned:
        raise PromptError(f"empty class name {name!r}: every class needs at least one word")
    bad = [s for s in SEPARATORS if s in cleaned]
    if bad:
        raise PromptError(
            f"class name {name!r} contains {' and '.join(repr(b) for b in bad)}, which separates "
            "phrases in a caption; remove it (e.g. 'st. bernard' -> 'st bernard')"
        )
    return cleaned


def classes_to_caption(classes: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join class names into one caption, official COCO-eval style: ``"a . b ."``.

    Returns ``(caption, char_spans)`` with one ``(start, end)`` span per class, in order.
    ``["Cat", "remote control"]`` -> ``("cat . remote control .", [(0, 3), (6, 20)])``.

    Raises:
        PromptError: no classes, or a name rejected by :func:`clean_class_name`.
    """
    if isinstance(classes, str):
        raise PromptError("classes must be a list of names, not one string; use a caption instead")
    names = [clean_class_name(c) for c in classes]
    if not names:
        raise PromptError("the class list is empty: give at least one class name")
    spans: list[tuple[int, int]] = []
    pos = 0
    for name in names:
        spans.append((pos, pos + len(name)))
        pos += len(name) + 3  # " . "
    caption = " . ".join(names) + " ."
    return caption, spans


def split_phrases(caption: str) -> list[tuple[str, tuple[int, int]]]:
    """Phrases between "." separators, with their ``(start, end)`` char spans in ``caption``.

    Leading/trailing spaces are left out of each span; empty pieces (e.g. from ". .") are skipped.
    ``"a cat . remote control."`` -> ``[("a cat", (0, 5)), ("remote control", (8, 22))]``.
    """
    phrases: list[tuple[str, tuple[int, int]]] = []
    start = 0
    for piece in caption.split("."):
        end = start + len(piece)
        stripped = piece.strip()
        if stripped:
            s = start + (len(piece) - len(piece.lstrip()))
            phrases.append((stripped, (s, s + len(stripped))))
        start = end + 1
    return phrases
