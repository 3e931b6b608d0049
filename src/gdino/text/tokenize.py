"""Captions -> the tensors the text encoder needs (:class:`TokenizedText`).

The one place where strings become tensors. Follows the official pipeline: tokenize with
``padding="longest"`` (no truncation, [CLS]/[SEP] added), build sub-sentence masks and position
ids, then cut everything to ``max_text_len`` tokens. Masks are gdino's per-item ones
(:func:`gdino.text.masks.sub_sentence_masks`), so a caption gives the same tensors alone or in a
padded batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from gdino.errors import PromptError
from gdino.text.masks import sub_sentence_masks
from gdino.text.tokenizer import special_token_ids

logger = logging.getLogger(__name__)


@dataclass
class TokenizedText:
    """A batch of tokenized captions, L = longest caption (<= max_text_len).

    Attributes:
        input_ids: ``[B, L]`` long, right-padded with the pad id (0).
        attention_mask: ``[B, L]`` bool, True on real tokens.
        token_type_ids: ``[B, L]`` long (zeros).
        position_ids: ``[B, L]`` long, restarting at 0 in every phrase.
        self_attention_masks: ``[B, L, L]`` bool, True = token i may attend to token j.
    """

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor
    position_ids: Tensor
    self_attention_masks: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> TokenizedText:
        """A copy with every tensor on ``device`` (copied without waiting for the device)."""
        return TokenizedText(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})

    def select(self, indices: int | Sequence[int] | Tensor) -> TokenizedText:
        """The items at ``indices`` (an int keeps the batch dimension); L is unchanged."""
        if isinstance(indices, int):
            indices = [indices]
        index = torch.as_tensor(indices, dtype=torch.long, device=self.input_ids.device)
        return TokenizedText(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def tokenize(tokenizer, captions: Sequence[str], max_text_len: int = 256) -> TokenizedText:
    """Tokenize ``captions`` (already normalized) into a :class:`TokenizedText`.

    Captions longer than ``max_text_len`` tokens are cut *after* mask generation, like the
    official code (their last tokens and [SEP] are dropped, with a logged warning); use
    :func:`gdino.text.chunking.chunk_classes` to keep class lists within the limit.

    Raises:
        PromptError: no captions, or a caption that is not a string.
    """
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions)
    if not captions:
        raise PromptError("no captions to tokenize")
    for c in captions:
        if not isinstance(c, str):
            raise PromptError(f"captions must be strings, got {type(c).__name__}: {c!r}")

    enc = tokenizer(captions, padding="longest", return_tensors="pt")
    input_ids = enc["input_ids"].long()
    attention_mask = enc["attention_mask"].bool()
    token_type_ids = enc.get("token_type_ids")
    token_type_ids = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids.long()
    masks, position_ids = sub_sentence_masks(input_ids, attention_mask, special_token_ids(tokenizer))

    if input_ids.shape[1] > max_text_len:
        dropped = attention_mask[:, max_text_len:].sum(1).tolist()
        for i, n in enumerate(dropped):
            if n:
                logger.warning(
                    "caption %d has %d tokens; the last %d (including [SEP]) are dropped to fit "
                    "max_text_len=%d: split the prompt (gdino.text.chunking.chunk_classes)",
                    i,
                    int(attention_mask[i].sum()),
                    n,
                    max_text_len,
                )
        input_ids = input_ids[:, :max_text_len].contiguous()
        attention_mask = attention_mask[:, :max_text_len].contiguous()
        token_type_ids = token_type_ids[:, :max_text_len].contiguous()
        position_ids = position_ids[:, :max_text_len].contiguous()
        masks = masks[:, :max_text_len, :max_text_len].contiguous()

    return TokenizedText(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        position_ids=position_ids,
        self_attention_masks=masks,
    )


def _to(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` on ``device``; from the host without waiting for the device (a read back always waits)."""
    return t.to(device, non_blocking=t.device.type == "cpu")
