"""Language-guided query selection: score every encoder token against the text and keep the
top ``num_queries`` as anchor boxes (official two-stage "standard")."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gdino.model.heads import contrastive_logits


def encoder_proposals(memory: Tensor, padding: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """One anchor per encoder token, in logit space, and the memory with invalid tokens zeroed.

    Args:
        memory: ``[B, S, d]``; padding: ``[B, S]`` bool True=padding; shapes: ``[(H_l, W_l)]``.
    Returns:
        ``(memory_zeroed [B,S,d], proposals [B,S,4])``: cell centres relative to the valid region,
        width/height ``0.05 * 2**level``; proposals outside (0.01, 0.99) or on padding are ``+inf``
        and their memory rows are 0 (official ``gen_encoder_output_proposals``).
    """
    b = memory.shape[0]
    device = memory.device
    proposals = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        level_pad = padding[:, start : start + h * w].view(b, h, w)
        valid_h = (~level_pad[:, :, 0]).sum(1)
        valid_w = (~level_pad[:, 0, :]).sum(1)
        grid_y, grid_x = torch.meshgrid(  # arange: linspace(0, size - 1, size) exactly, export-friendly
            torch.arange(h, dtype=torch.float32, device=device),
            torch.arange(w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        grid = torch.stack((grid_x, grid_y), -1)
        scale = torch.stack((valid_w, valid_h), -1).view(b, 1, 1, 2).float()
        grid = (grid[None].expand(b, -1, -1, -1) + 0.5) / scale
        wh = torch.full_like(grid, 0.05 * (2.0**lvl))
        proposals.append(torch.cat((grid, wh), -1).view(b, -1, 4))
        start += h * w
    props = torch.cat(proposals, 1)
    valid = ((props > 0.01) & (props < 0.99)).all(-1, keepdim=True)
    props = torch.log(props / (1 - props))
    invalid = padding[..., None] | ~valid
    props = props.masked_fill(invalid, float("inf"))
    return memory.masked_fill(invalid, 0.0), props


def select_queries(
    memory: Tensor,
    padding: Tensor,
    shapes: list[tuple[int, int]],
    text: Tensor,
    token_mask: Tensor,
    *,
    enc_output: nn.Module,
    enc_output_norm: nn.Module,
    enc_out_bbox_embed: nn.Module,
    num_queries: int,
    max_text_len: int,
    class_head: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pick the ``num_queries`` encoder tokens that best match any text token.

    Args:
        memory: ``[B,S,d]`` enhanced image tokens; padding ``[B,S]``; text ``[B,L,d]`` enhanced text;
        token_mask ``[B,L]`` True on real tokens. The three modules are the official
        ``enc_output``, ``enc_output_norm`` and ``enc_out_bbox_embed``; ``class_head(queries, text,
        token_mask)`` scores tokens (default: the plain :func:`contrastive_logits`).
    Returns:
        ``(ref_logits [B,K,4] detached, enc_logits [B,K,T], enc_boxes [B,K,4])``: the anchors in logit
        space, and the selected proposals' own class logits and (undetached, sigmoid) boxes, which
        training uses for the encoder loss. ``K = min(num_queries, S)``, sorted by score.
    """
    zeroed, proposals = encoder_proposals(memory, padding, shapes)
    out_memory = enc_output_norm(enc_output(zeroed))
    if class_head is None:

        def class_head(q: Tensor, t: Tensor, m: Tensor) -> Tensor:
            return contrastive_logits(q, t, m, max_text_len)

    scores = class_head(out_memory, text, token_mask).max(-1).values
    k = torch.sym_min(num_queries, scores.shape[1])  # an int in eager mode, symbolic under export
    topk = torch.topk(scores, k, dim=1).indices
    # the box head is row-wise: run it on the K selected tokens only (the official runs it on all S)
    selected = torch.gather(out_memory, 1, topk[..., None].expand(-1, -1, out_memory.shape[-1]))
    anchors = torch.gather(proposals, 1, topk[..., None].expand(-1, -1, 4)).to(out_memory.dtype)
    ref_undetached = enc_out_bbox_embed(selected) + anchors
    enc_logits = class_head(selected, text, token_mask)
    return ref_undetached.detach(), enc_logits, ref_undetached.sigmoid()
