"""Swin Transformer image backbone, computed as the official (mmdet-style) code.

Images of any size: the patch embedding pads right/bottom to a multiple of the patch size, every
block pads to a multiple of the window size (padded tokens are not masked, as the official), the
shifted blocks keep each window to its regions with an additive mask (:data:`REGION_MASK_VALUE`, not the
official -100; the same results, see there), patch merging pads odd sizes. Parameter names follow the
official checkpoint (``backbone.0.*`` there, ``backbone.*`` in gdino). Window attention runs through
``scaled_dot_product_attention`` with the relative position bias (and shift mask) as additive mask,
except in full-precision training on the CPU, where it is written out (see ``WindowAttention``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gdino.config import SwinConfig
from gdino.model.feed_forward import residual_feed_forward
from gdino.model.fusion import DropPath


def relative_position_index(window_size: int) -> Tensor:
    """``[ws*ws, ws*ws]`` index into the ``(2ws-1)^2`` bias table for every token pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def window_partition(x: Tensor, ws: int) -> Tensor:
    """``[B,H,W,C]`` (H, W multiples of ws) -> ``[B*nW, ws*ws, C]``."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


#: Additive attention mask between regions of a shifted window. The official code adds -100, and
#: ``exp(-100)`` (3.7e-44) is a denormal float: every masked probability of a shifted window (5-19%
#: of them in Swin-T at 512 px) and its gradient then sent the attention products down the CPU's
#: slow path for denormal operands (one such product 16x slower; a Swin-T forward + backward at
#: 512 px 16% slower). With -1e4 the masked probabilities are exactly zero. The sums do not change:
#: a -100 entry adds under 1e-43 to a softmax denominator of at least 1 and to products of normal
#: floats, far below their rounding (tests/test_backbone.py compares both masks).
REGION_MASK_VALUE = -1e4


def shift_region_mask(hp: int, wp: int, ws: int, shift: int, device: torch.device) -> Tensor:
    """``[nW, ws*ws, ws*ws]`` additive mask (0 or :data:`REGION_MASK_VALUE`) keeping shifted windows to their regions."""
    img = torch.zeros((hp, wp), device=device)
    region = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[hs, wsl] = region
            region += 1
    nh, nw = hp // ws, wp // ws  # window_partition with every size written out (export-friendly)
    windows = img.view(nh, ws, nw, ws).permute(0, 2, 1, 3).reshape(nh * nw, ws * ws)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, REGION_MASK_VALUE, 0.0)


class WindowIndex(NamedTuple):
    """Token indices that turn an ``h x w`` grid into shifted windows and back (see :func:`window_index`)."""

    source: Tensor  # [nW*ws*ws] grid token read by each window slot (0 where the slot is padding)
    padding: Tensor  # window slots that are padding (zeroed after the gather)
    slot: Tensor  # [h*w] window slot of each grid token (the inverse)


def window_index(h: int, w: int, ws: int, shift: int, device: torch.device) -> WindowIndex:
    """Indices that pad an ``h x w`` token grid to multiples of ``ws`` (zeros right/bottom), roll it
    by ``-shift`` and partition it into windows, as the official pad, ``torch.roll`` and
    ``window_partition`` do, computed by running those very steps on the grid of token numbers.

    Computed on the host (the boolean indexing needs the data) and copied to ``device`` without
    waiting for it: built on a GPU it would make the host wait for the queued kernels."""
    grid = torch.arange(1, h * w + 1).view(1, h, w, 1)  # 0 will mark padding
    grid = F.pad(grid, (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    order = window_partition(grid, ws).flatten()
    real = order > 0
    slots = torch.arange(order.numel())
    slot = torch.empty(h * w, dtype=torch.long)
    slot[order[real] - 1] = slots[real]
    index = WindowIndex((order - 1).clamp_(min=0), slots[~real], slot)
    if torch.device(device).type == "cpu":
        return index
    return WindowIndex(*(t.to(device, non_blocking=True) for t in index))


class WindowAttention(nn.Module):
    relative_position_index: Tensor  # buffer

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x ``[B*nW, N, C]``; mask ``[nW, N, N]`` additive or None."""
        bw, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).view(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, heads).permute(2, 0, 1).to(q.dtype)  # [heads, N, N]
        full = bias[None] if mask is None else bias[None] + mask[:, None].to(q.dtype)  # [nW or 1, heads, N, N]
        full_precision = q.dtype in (torch.float32, torch.float64)  # autocast: the math path's float32 softmax
        if torch.is_grad_enabled() and x.device.type == "cpu" and full_precision and not torch.compiler.is_exporting():
            # training on the CPU: the bias needs a gradient, so scaled_dot_product_attention would
            # run its math fallback, which scales q and k separately, materializes the expanded
            # mask and checks every row for -inf; written out (the official order: q * scale,
            # q @ k^T, + bias and mask, softmax, @ v) a block's window attention costs 2-19% less
            # (stage 1 the most). Windows of one image are consecutive: [B, nW, ...] + [nW, ...].
            scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
            scores = (scores.view(-1, full.shape[0], heads, n, n) + full).view(bw, heads, n, n)
            out = scores.softmax(-1) @ v
        else:
            attn_mask = full[None].expand(bw // full.shape[0], -1, -1, -1, -1).reshape(bw, heads, n, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention + MLP."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.window_size, self.shift = window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward_grid(self, x: Tensor, mask: Tensor | None, h: int, w: int) -> Tensor:
        """The export path of :meth:`forward`: the official pad, roll and partition as reshapes.

        Every size is written out from ``h``, ``w`` and the padded ``hp``, ``wp`` (no ``-1``, no
        data-dependent index), so ``torch.export`` keeps the image size symbolic and cheap to reason
        about. Same result as :meth:`forward` (padded tokens are zeros after the norm, as there).
        """
        b, _, c = x.shape
        ws = self.window_size
        nh, nw = (h + ws - 1) // ws, (w + ws - 1) // ws
        hp, wp = nh * ws, nw * ws
        grid = F.pad(self.norm1(x).view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
        parts = grid.view(b, nh, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, ws * ws, c)
        blocks = None if not self.shift or mask is None else mask.repeat(b, 1, 1)
        parts = self.attn(parts, blocks)
        grid = parts.view(b, nh, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shift:
            grid = torch.roll(grid, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + grid[:, :h, :w].reshape(b, h * w, c)
        return residual_feed_forward(x, self.mlp.fc1, self.mlp.fc2, "gelu", pre_norm=self.norm2)

    def forward(self, x: Tensor, mask: Tensor | None, windows: WindowIndex) -> Tensor:
        """x ``[B, h*w, C]``; ``windows`` the grid's :func:`window_index` for this block's shift."""
        b, _, c = x.shape
        ws = self.window_size
        parts = self.norm1(x).index_select(1, windows.source)  # pad, shift and partition: one gather
        if windows.padding.numel():
            parts.index_fill_(1, windows.padding, 0.0)
        parts = self.attn(parts.view(-1, ws * ws, c), mask if self.shift else None)
        x = self.drop_path.add_to(x, parts.view(b, -1, c).index_select(1, windows.slot))
        if self.training:
            return self.drop_path.add_to(x, self.mlp(self.norm2(x)))
        return residual_feed_forward(x, self.mlp.fc1, self.mlp.fc2, "gelu", pre_norm=self.norm2)


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        if torch.compiler.is_exporting():  # pad to even sizes and split rows/columns by reshapes
            h2, w2 = (h + 1) // 2, (w + 1) // 2
            grid = F.pad(x.view(b, h, w, c), (0, 0, 0, 2 * w2 - w, 0, 2 * h2 - h)).view(b, h2, 2, w2, 2, c)
            parts = [grid[:, :, 0, :, 0], grid[:, :, 1, :, 0], grid[:, :, 0, :, 1], grid[:, :, 1, :, 1]]
            return self.reduction(self.norm(torch.cat(parts, -1).reshape(b, h2 * w2, 4 * c)))
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_paths: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift, mlp_ratio, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.use_checkpoint = False

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor | None]:
        ws = self.window_size
        hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws
        mask = shift_region_mask(hp, wp, ws, self.shift, x.device) if len(self.blocks) > 1 else None
        if torch.compiler.is_exporting():
            for block in cast(Iterable[SwinBlock], self.blocks):
                x = block.forward_grid(x, mask, h, w)
            return x, self.downsample(x, h, w) if self.downsample is not None else None
        index = {
            shift: window_index(h, w, ws, shift, x.device)
            for shift in {b.shift for b in cast(Iterable[SwinBlock], self.blocks)}
        }
        for block in cast(Iterable[SwinBlock], self.blocks):
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, index[block.shift], use_reentrant=False)
            else:
                x = block(x, mask, index[block.shift])
        down = self.downsample(x, h, w) if self.downsample is not None else None
        return x, down


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        h, w = x.shape[-2:]
        if torch.compiler.is_exporting():  # the same padding, written as the padded size (symbolic sizes)
            x = F.pad(x, (0, (w + p - 1) // p * p - w, 0, (h + p - 1) // p * p - h))
        else:
            x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)
        b, c, hh, ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).view(b, c, hh, ww)


class SwinTransformer(nn.Module):
    """Returns the NCHW maps of the stages in ``cfg.out_indices`` (each through its ``norm{i}``)."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        start = 0
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            self.layers.append(
                SwinStage(
                    cfg.embed_dim * 2**i,
                    depth,
                    heads,
                    cfg.window_size,
                    cfg.mlp_ratio,
                    rates[start : start + depth],
                    downsample=i < len(cfg.depths) - 1,
                )
            )
            start += depth
        for i in cfg.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(cfg.embed_dim * 2**i))
        self.apply(_init_weights)

    @property
    def use_checkpoint(self) -> bool:
        return all(stage.use_checkpoint for stage in self.layers)

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool) -> None:
        for stage in self.layers:
            cast(SwinStage, stage).use_checkpoint = bool(value)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        x = self.patch_embed(pixel_values)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        outs: list[Tensor] = []
        for i, stage in enumerate(self.layers):
            out, down = stage(x, h, w)
            if i in self.cfg.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(out.shape[0], h, w, out.shape[-1]).permute(0, 3, 1, 2).contiguous())
            if down is not None:
                x, h, w = down, (h + 1) // 2, (w + 1) // 2
        return outs


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
