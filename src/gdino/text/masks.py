"""Sub-sentence attention masks and position ids for the text encoder.

Grounding DINO's BERT and text-enhancer layers let a token attend only to the tokens of its own
phrase. A phrase is the run of tokens after one delimiter up to and including the next one, where
the delimiters are the special ids ([CLS], [SEP], ".", "?" = 101, 102, 1012, 1029). Position ids
restart at 0 in every phrase. Example, ``[CLS] cat . dog . [SEP]``::

    blocks {1, 2} and {3, 4}; [CLS] and [SEP] attend only to themselves
    position_ids = [0, 0, 1, 0, 1, 0]

Two functions:

- :func:`sub_sentence_masks` (gdino): every item of a batch gets exactly what it would get alone,
  unpadded; padding tokens attend only to themselves with position 0. Vectorized.
- :func:`official_sub_sentence_masks`: the official batch function's output, bit for bit. It
  differs from the above only in padded batches, for shorter captions that do not end with "." or
  "?": their [SEP] is not the last column, so it joins the trailing words' block (with a position
  id) instead of standing alone. Normalized captions (ending in ".") are not affected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: [CLS], [SEP], ".", "?" in bert-base-uncased.
DEFAULT_SPECIAL_IDS = (101, 102, 1012, 1029)


def sub_sentence_masks(
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    special_ids: Sequence[int] = DEFAULT_SPECIAL_IDS,
) -> tuple[Tensor, Tensor]:
    """Per-item sub-sentence masks and position ids, each item computed as if it were alone.

    Args:
        input_ids: ``[B, L]`` token ids, right-padded.
        attention_mask: ``[B, L]`` 1/True on real tokens (a prefix of each row); None = no padding.
        special_ids: ids that delimit phrases.

    Returns:
        ``(masks [B, L, L] bool, position_ids [B, L] long)``; ``masks[b, i, j]`` True = token i may
        attend to token j. Equal to the official function run on each item alone (cropped to its
        length), with padding rows/columns holding only the diagonal and position 0.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    device = input_ids.device
    idx = torch.arange(length, device=device)
    if attention_mask is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=device)
    else:
        valid = attention_mask.to(device=device, dtype=torch.bool)
    lengths = valid.sum(1, keepdim=True)  # [B, 1]
    if not torch.equal(valid, idx < lengths):
        raise ValueError("attention_mask must mark a prefix of each row (right padding only)")

    special = torch.isin(input_ids, torch.as_tensor(list(special_ids)).to(device, non_blocking=True)) & valid
    # Special tokens strictly inside the item close a phrase; the first and the item's last token
    # (normally [CLS] and [SEP]) stand alone, as in the official code for columns 0 and L-1.
    delim = special & (idx > 0) & (idx < lengths - 1)
    delim_before = delim.cumsum(1) - delim.long()  # delimiters strictly before each token
    # A token belongs to a phrase block iff some delimiter closes it (at or after the token);
    # token 0 never does (blocks start after the previous delimiter, or after column 0).
    in_block = (idx > 0) & (delim_before < delim.sum(1, keepdim=True))

    last_delim = torch.where(delim, idx, 0).cummax(1).values  # last delimiter at or before j
    block_start = torch.cat([last_delim.new_zeros(batch, 1), last_delim[:, :-1]], 1) + 1
    position_ids = torch.where(in_block, idx - block_start, 0)

    block = torch.where(in_block, delim_before, -1)
    masks = (block[:, :, None] == block[:, None, :]) & in_block[:, :, None]
    masks |= torch.eye(length, dtype=torch.bool, device=device)
    return masks, position_ids


def official_sub_sentence_masks(
    input_ids: Tensor, special_ids: Sequence[int] = DEFAULT_SPECIAL_IDS
) -> tuple[Tensor, Tensor]:
    """The official ``generate_masks_with_special_tokens*`` masks and position ids, bit for bit.

    Semantics (official bertwarper.py): special positions are visited in row-major order with one
    running "previous delimiter column" shared across rows; a special at column 0 or L-1 keeps
    only its diagonal; any other closes the block ``(previous, column]`` and numbers it from 0.
    The padding mask is ignored, so padded batches can differ from per-item results (module doc).
    Slow (a Python loop); meant for tests and parity checks.

    Args:
        input_ids: ``[B, L]``.
    Returns:
        ``(masks [B, L, L] bool, position_ids [B, L] long)``.
    """
    batch, length = input_ids.shape
    masks = torch.eye(length, dtype=torch.bool).repeat(batch, 1, 1)
    position_ids = torch.zeros(batch, length, dtype=torch.long)
    special = torch.isin(input_ids.cpu(), torch.as_tensor(list(special_ids)))
    previous = 0
    for row, col in special.nonzero().tolist():
        if 0 < col < length - 1 and col > previous:
            masks[row, previous + 1 : col + 1, previous + 1 : col + 1] = True
            position_ids[row, previous + 1 : col + 1] = torch.arange(col - previous)
        # col == 0 or L-1: diagonal only, position 0 (already so). col <= previous only happens
        # when a row lacks a leading special token; the official code then writes nothing or fails.
        previous = col
    return masks.to(input_ids.device), position_ids.to(input_ids.device)
