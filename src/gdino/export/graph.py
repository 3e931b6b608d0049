"""Tensors-only wrappers of :class:`GroundingDINO` with the exported graphs' inputs and outputs.

Each wrapper's ``forward`` takes the graph inputs positionally in the order of its ``inputs`` and
returns its ``outputs``. Masks come in as int64 (1 = real token / may attend / real pixel) so any
language can feed them; the model's computation is the PyTorch one. Under ``torch.export`` the
model takes its export-friendly branches (``torch.compiler.is_exporting()``: symbolic sizes, no
data-dependent loops, row gathers instead of ``embedding_bag``); in eager mode these wrappers give
exactly the model's outputs, which is what the parity tests compare the runtimes against.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gdino.model.features import TextFeatures
from gdino.model.grounding_dino import GroundingDINO
from gdino.text.tokenize import TokenizedText

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "self_attention_masks")
IMAGE_INPUTS = ("pixel_values", "pixel_mask")
INPUT_NAMES = TEXT_INPUTS + IMAGE_INPUTS
OUTPUT_NAMES = ("logits", "boxes")
#: the split graphs: text encoder -> ``text_features``; the rest takes it with the masks it needs
TEXT_OUTPUTS = ("text_features",)
FEATURES_INPUTS = ("text_features", "attention_mask", "position_ids", "self_attention_masks") + IMAGE_INPUTS


def _outputs(logits: Tensor, boxes: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The L input tokens' logits (the model pads to ``max_text_len`` in eager mode) in float32."""
    return logits[..., :length].float(), boxes.float()


class _Graph(nn.Module):
    """A tensors-only wrapper of the model whose ``forward`` arguments are the ONNX input names."""

    model: GroundingDINO

    def __init__(self, model: GroundingDINO) -> None:
        super().__init__()
        self.model = model


def _tokenized(
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor,
    position_ids: Tensor,
    self_attention_masks: Tensor,
) -> TokenizedText:
    """The graph's int64 text inputs as the model's :class:`TokenizedText` (masks as bool)."""
    return TokenizedText(input_ids, attention_mask.bool(), token_type_ids, position_ids, self_attention_masks.bool())


class DetectionGraph(_Graph):
    """The whole detector: tokenized text + padded pixels -> ``logits [B,Q,L]``, ``boxes [B,Q,4]``."""

    inputs: tuple[str, ...] = INPUT_NAMES
    outputs: tuple[str, ...] = OUTPUT_NAMES

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor,
        position_ids: Tensor,
        self_attention_masks: Tensor,
        pixel_values: Tensor,
        pixel_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        torch._check(pixel_values.shape[0] == input_ids.shape[0])  # one prompt per image (one symbol for tracing)
        text = _tokenized(input_ids, attention_mask, token_type_ids, position_ids, self_attention_masks)
        out = self.model(pixel_values.to(self.model.dtype), text, pixel_mask.bool())
        return _outputs(out.logits, out.boxes, input_ids.shape[1])


class TextGraph(_Graph):
    """The text half: tokenized text -> ``text_features [B,L,d]`` (BERT + ``feat_map``), cacheable per prompt."""

    inputs: tuple[str, ...] = TEXT_INPUTS
    outputs: tuple[str, ...] = TEXT_OUTPUTS

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor,
        position_ids: Tensor,
        self_attention_masks: Tensor,
    ) -> Tensor:
        text = _tokenized(input_ids, attention_mask, token_type_ids, position_ids, self_attention_masks)
        return self.model.encode_text(text).features.float()


class FeaturesGraph(_Graph):
    """The rest: ``text_features`` (+ the text masks) and pixels -> ``logits``, ``boxes``."""

    inputs: tuple[str, ...] = FEATURES_INPUTS
    outputs: tuple[str, ...] = OUTPUT_NAMES

    def forward(
        self,
        text_features: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        self_attention_masks: Tensor,
        pixel_values: Tensor,
        pixel_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        dtype = self.model.dtype
        torch._check(pixel_values.shape[0] == text_features.shape[0])  # one prompt per image
        text = TextFeatures(text_features.to(dtype), attention_mask.bool(), self_attention_masks.bool(), position_ids)
        image = self.model.encode_image(pixel_values.to(dtype), pixel_mask.bool())
        out = self.model.forward_features(image, text)
        return _outputs(out.logits, out.boxes, text_features.shape[1])


def example_inputs(
    model: GroundingDINO, batch: int = 2, height: int = 160, width: int = 224, length: int = 11
) -> dict[str, Tensor]:
    """Placeholder inputs of the given sizes (values do not matter for tracing; sizes do)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (batch, length), generator=gen)
    ids[:, 0], ids[:, -1] = 101, 102
    ones = torch.ones((batch, length), dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": ones,
        "token_type_ids": torch.zeros_like(ids),
        "position_ids": torch.arange(length).expand(batch, -1).contiguous(),
        "self_attention_masks": torch.ones((batch, length, length), dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, height, width, generator=gen),
        "pixel_mask": torch.ones((batch, height, width), dtype=torch.long),
        "text_features": torch.randn(batch, length, model.config.hidden_dim, generator=gen),
    }
