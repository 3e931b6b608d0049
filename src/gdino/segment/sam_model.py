"""SAM (the ``segment-anything`` package) built from its building blocks, sized by a typed config.

``build_sam(SamConfig(...))`` writes out every constructor argument, so tests can make small
random models with the same code path as the released ``vit_b`` / ``vit_l`` / ``vit_h``. The
package is an optional extra (``pip install gdino[sam]``); it is imported only when a model is
built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import torch

from gdino.errors import GdinoError

#: ImageNet mean / std in 0-255 units, as SAM normalizes.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """The shape of a SAM model (released sizes in :data:`SAM_PRESETS`).

    Attributes:
        encoder_embed_dim, encoder_depth, encoder_num_heads: the ViT image encoder.
        encoder_global_attn_indexes: blocks with global attention (the others are windowed).
        image_size: side of the square model input (the longest image side is resized to it).
        patch_size: ViT patch size; the image embedding is ``image_size / patch_size`` square.
        window_size: windowed-attention size of the encoder.
        prompt_embed_dim: prompt / mask-decoder width.
        decoder_depth, decoder_heads, decoder_mlp_dim: the two-way transformer.
        iou_head_hidden_dim: hidden width of the mask-quality head.
        mask_in_chans: hidden channels of the (unused here) mask-prompt encoder.
    """

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SamConfig:
        d = dict(d)
        d["encoder_global_attn_indexes"] = tuple(d.get("encoder_global_attn_indexes", ()))
        return cls(**d)


SAM_PRESETS: dict[str, SamConfig] = {
    "sam-vit-b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "sam-vit-l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "sam-vit-h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    # a small random-weight model for tests and smoke runs (not a released checkpoint)
    "sam-tiny": SamConfig(
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=256,
        window_size=4,
        prompt_embed_dim=32,
        decoder_heads=2,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
        mask_in_chans=8,
    ),
}


def import_segment_anything():
    """The ``segment_anything`` package, or a one-line error saying how to install it."""
    try:
        import segment_anything  # optional ([sam])
    except ImportError as e:
        raise GdinoError("SAM segmenters need the segment-anything package: pip install 'gdino[sam]'") from e
    return segment_anything


def build_sam(config: SamConfig) -> torch.nn.Module:
    """A ``segment_anything.modeling.Sam`` with random weights, in eval mode."""
    import_segment_anything()
    from segment_anything.modeling import (  # optional ([sam])
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    if config.image_size % config.patch_size:
        raise GdinoError(f"SAM image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
    grid = config.image_size // config.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=4.0,
            out_chans=config.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=config.decoder_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()
