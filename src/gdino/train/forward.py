"""The training forward as one module (so DDP sees it): text, image, denoising, decoder."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from gdino.errors import GdinoError
from gdino.model.features import ImageFeatures, TextFeatures
from gdino.model.grounding_dino import GroundingDINO
from gdino.text.tokenize import TokenizedText, tokenize
from gdino.train.denoising import build_denoising


class TrainForward(nn.Module):
    """Text, image, denoising and decoder of one training step."""

    def __init__(self, model: GroundingDINO, denoising: Any = None) -> None:
        super().__init__()
        self.model = model
        self.denoising = denoising  # a gdino.train.denoising.DenoisingConfig, or None for off

    def encode(
        self, pixel_values: Tensor, pixel_mask: Tensor, captions: list[str]
    ) -> tuple[TokenizedText, TextFeatures, ImageFeatures]:
        """The host-tokenized captions, their text features and the image features."""
        m = self.model
        if m.tokenizer is None:
            raise GdinoError("the model has no tokenizer attached: training needs one")
        text = tokenize(m.tokenizer, list(captions), m.config.max_text_len)
        text_features = m.encode_text(text.to(pixel_values.device))
        image_features = m.encode_image(pixel_values, pixel_mask)
        return text, text_features, image_features

    def decode(
        self, text: TokenizedText, text_features: TextFeatures, image_features: ImageFeatures, targets: list
    ) -> tuple[Any, Any, int]:
        """Fusion, query selection and decoder, with the denoising queries of ``targets``."""
        m = self.model
        dn = meta = None
        if self.denoising is not None:
            lens = text.attention_mask.sum(1).tolist()  # a host tensor: no sync
            # query selection keeps min(num_queries, encoder tokens): small images have fewer than 900
            tokens = sum(f.shape[-2] * f.shape[-1] for f in image_features.maps)
            queries = min(m.config.num_queries, tokens)
            built = build_denoising(targets, text_features, queries, self.denoising, valid_lens=lens)
            if built is not None:
                dn, meta = built
        return m.forward_features(image_features, text_features, dn), meta, text.input_ids.shape[1]

    def forward(
        self, pixel_values: Tensor, pixel_mask: Tensor, captions: list[str], targets: list
    ) -> tuple[Any, Any, int]:
        """Returns the model output, the denoising meta (or None) and the longest prompt's token
        count. Captions are tokenized on the host, so the prompt lengths need no device read;
        ``targets`` may stay on the host too (the denoising noise is drawn there)."""
        text, text_features, image_features = self.encode(pixel_values, pixel_mask, captions)
        return self.decode(text, text_features, image_features, targets)


__all__ = ["TrainForward"]
