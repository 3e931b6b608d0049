"""Single-caption tensors -> one right-padded batch, the way :func:`gdino.text.tokenize.tokenize`
pads a batch of captions.

Padded tokens are masked: ``attention_mask`` False, id/type/position 0, and rows and columns of the
sub-sentence masks False except the diagonal (a padding token attends only to itself, as in
:func:`gdino.text.masks.sub_sentence_masks`). So a caption gives the same tensors in a padded
batch as alone, and a model that masks them gives each row its result alone. Used by the server's
mixed-prompt batches (:mod:`gdino.serve.forward`) for both the model's text features and the
tokenized inputs of an exported graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gdino.text.tokenize import TokenizedText

#: the pad value of each :class:`TokenizedText` field (bert-base-uncased's [PAD] id is 0)
PAD_VALUES: dict[str, int | bool] = {
    "input_ids": 0,
    "attention_mask": False,
    "token_type_ids": 0,
    "position_ids": 0,
}


def pad_right(t: Tensor, length: int, dim: int, value: float | bool | int) -> Tensor:
    """``t`` padded with ``value`` at the end of ``dim`` up to ``length``."""
    missing = length - t.shape[dim]
    if missing < 0:
        raise ValueError(f"cannot pad dimension {dim} of size {t.shape[dim]} to {length}")
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, missing]
    if t.dtype == torch.bool:
        return F.pad(t.to(torch.uint8), pad, value=int(value)).bool()
    return F.pad(t, pad, value=value)


def pad_square(mask: Tensor, length: int) -> Tensor:
    """``[B, L, L]`` -> ``[B, length, length]``: new rows/columns False except the diagonal."""
    n = mask.shape[-1]
    if n == length:
        return mask
    if n > length:
        raise ValueError(f"cannot pad a {n}x{n} mask to {length}x{length}")
    out = torch.zeros((mask.shape[0], length, length), dtype=mask.dtype, device=mask.device)
    out[:, :n, :n] = mask
    idx = torch.arange(n, length, device=mask.device)
    out[:, idx, idx] = True
    return out


def pad_tokenized(parts: Sequence[TokenizedText]) -> TokenizedText:
    """Tokenized captions -> one batch of the longest length, right-padded with masked tokens
    (equal to tokenizing the captions together, for captions within ``max_text_len``)."""
    if not parts:
        raise ValueError("no tokenized captions to pad")
    if len(parts) == 1:
        return parts[0]
    length = max(p.input_ids.shape[1] for p in parts)
    return TokenizedText(
        **{
            name: torch.cat([pad_right(getattr(p, name), length, 1, value) for p in parts])
            for name, value in PAD_VALUES.items()
        },
        self_attention_masks=torch.cat([pad_square(p.self_attention_masks, length) for p in parts]),
    )
