"""Record golden outputs of the original Grounding DINO for seeded weights: tests/fixtures/official_golden.*

Runs in a separate environment with the original implementation (``rf-groundingdino`` or
``groundingdino-py``; both need transformers < 5)::

    /path/to/oracle-venv/bin/python scripts/make_official_golden.py --vocab /path/to/vocab.txt

It builds the original model offline with a small config (the shape of gdino's ``tiny`` preset: a
small Swin registered in place of Swin-T, a 2-layer BERT of width 64 built from a local folder;
the original hard-codes d_model = 256 in two sine embeddings, which are widened to follow
``hidden_dim`` here, see :func:`_patch_hidden_width`), sets every parameter with :func:`seeded_value` (a rule keyed on the official parameter name, so the
test re-creates the weights without the original code), and runs each (image, caption) pair alone,
as the official single-image run does. It writes

- ``official_golden.safetensors``: the photo input (uint8) and, per pair, the logits of the valid
  token columns and the boxes;
- ``official_golden.json``: the config, captions, token ids, image recipe, and the official
  parameter names with shapes (so the test can check that its key map covers every one).

This module imports only the standard library and torch at import time; the test imports
:func:`seeded_value`, :func:`random_image` and :func:`normalize` from it, and
benchmarks/bench_forward.py :func:`seed_official_weights`. Regenerating with the same torch gives
the same file; the measured gdino error against it is ~1e-6 (boxes) and ~3e-5 (logits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import tempfile
from pathlib import Path

import torch

# The small model: gdino's "tiny" preset (src/gdino/config.py) written in the original's terms.
SWIN = dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=7)
BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
MODEL = dict(
    hidden_dim=64,
    num_queries=50,
    enc_layers=2,
    dec_layers=2,
    nheads=4,
    dim_feedforward=128,
)

CAPTIONS = ["cat . remote control .", "a cat lying on a pink blanket . two remotes . sofa ."]
IMAGE_HW = (96, 128)
RANDOM_IMAGE_SEED = 1234
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_NORM_WEIGHT = re.compile(r"(norm|LayerNorm)[^.]*\.weight$|^input_proj\.\d+\.1\.weight$")


def key_seed(key: str) -> int:
    """A 63-bit seed derived from a parameter name (sha256, stable across platforms)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def seeded_value(key: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The float32 value of official parameter ``key``: a fixed rule of realistic scale.

    Fusion gammas N(0.5, 0.1); norm weights 1 + N(0, 0.1) (LayerNorms and the input GroupNorms);
    deformable sampling-offset biases N(0, 2) (points spread over several pixels, as trained);
    other 1-D tensors N(0, 0.02); everything else N(0, 1/fan_in).
    """
    gen = torch.Generator().manual_seed(key_seed(key))
    shape = tuple(shape)
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    leaf = key.rsplit(".", 1)[-1]
    if leaf.startswith("gamma"):
        return 0.5 + 0.1 * noise
    if len(shape) == 1 and _NORM_WEIGHT.search(key):
        return 1.0 + 0.1 * noise
    if key.endswith("sampling_offsets.bias"):
        return 2.0 * noise
    if len(shape) == 1:
        return 0.02 * noise
    fan_in = 1
    for n in shape[1:]:
        fan_in *= n
    return noise / fan_in**0.5


def random_image() -> torch.Tensor:
    """The first input: a [3,H,W] normalized image of smooth random blobs (seeded)."""
    gen = torch.Generator().manual_seed(RANDOM_IMAGE_SEED)
    coarse = torch.rand((1, 3, IMAGE_HW[0] // 8, IMAGE_HW[1] // 8), generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=IMAGE_HW, mode="bilinear", align_corners=False)
    fine = 0.1 * torch.rand((1, 3, *IMAGE_HW), generator=gen)
    return normalize(((smooth + fine).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0))


def normalize(hwc_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [H,W,3] RGB -> float32 [3,H,W] ImageNet-normalized (the official ToTensor + Normalize)."""
    x = hwc_uint8.permute(2, 0, 1).to(torch.float32) / 255.0
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


def _photo(path: str | None) -> torch.Tensor:
    """The second input: a real photo resized (PIL bilinear) to IMAGE_HW, uint8 [H,W,3]."""
    import numpy as np
    from PIL import Image

    if path:
        img = Image.open(path).convert("RGB")
    else:
        try:
            from skimage import data
        except ImportError:
            sys.exit("no --photo given and scikit-image is not installed (it ships chelsea the cat)")
        img = Image.fromarray(data.chelsea())
    img = img.resize((IMAGE_HW[1], IMAGE_HW[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy())


def _bert_dir(vocab: str, root: Path) -> Path:
    """A local folder standing in for "bert-base-uncased": small BertConfig + the real vocab."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = root / "bert-small"
    torch.manual_seed(0)
    BertModel(BertConfig(**BERT)).save_pretrained(d)
    BertTokenizerFast(vocab_file=vocab, do_lower_case=True).save_pretrained(d)
    return d


def _sine_box_embedding(pos: torch.Tensor, num_feats: int) -> torch.Tensor:
    """The official ``gen_sineembed_for_position`` with its hard-coded 128 made ``num_feats``."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=pos.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def embed(x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, None] * (2 * math.pi) / dim_t
        return torch.stack((x[:, :, 0::2].sin(), x[:, :, 1::2].cos()), dim=3).flatten(2)

    parts = [embed(pos[:, :, i]) for i in range(pos.size(-1))]
    parts[0], parts[1] = parts[1], parts[0]  # (y, x, w, h)
    return torch.cat(parts, dim=2)


def _patch_hidden_width(transformer_module, d_model: int) -> None:
    """Make the original's two sine embeddings follow ``d_model`` (they hard-code d_model = 256).

    ``get_sine_pos_embed(..., num_pos_feats=256)`` (text positions) gets ``d_model`` and
    ``gen_sineembed_for_position`` (query boxes, 128 per coordinate) gets ``d_model // 2``; at
    d_model = 256 both equal the originals, which is checked here.
    """
    original_text = transformer_module.get_sine_pos_embed
    original_box = transformer_module.gen_sineembed_for_position
    probe = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_sine_box_embedding(probe, 128), original_box(probe))
    assert torch.equal(_sine_box_embedding(probe[..., :2], 128), original_box(probe[..., :2]))

    def text_pos(pos_tensor, num_pos_feats=128, temperature=10000, exchange_xy=True):
        assert num_pos_feats == 256, "unexpected call site"
        return original_text(pos_tensor, d_model, temperature, exchange_xy)

    transformer_module.get_sine_pos_embed = text_pos
    transformer_module.gen_sineembed_for_position = lambda pos: _sine_box_embedding(pos, d_model // 2)


def _build_official(bert_dir: Path):
    import groundingdino
    from groundingdino.models import build_model
    from groundingdino.models.GroundingDINO import transformer as official_transformer
    from groundingdino.models.GroundingDINO.backbone import backbone as official_backbone
    from groundingdino.models.GroundingDINO.backbone.swin_transformer import SwinTransformer
    from groundingdino.util.slconfig import SLConfig

    def small_swin(modelname, pretrain_img_size, **kw):  # replaces the five-entry registry
        return SwinTransformer(pretrain_img_size=pretrain_img_size, **{**SWIN, **kw})

    official_backbone.build_swin_transformer = small_swin
    _patch_hidden_width(official_transformer, MODEL["hidden_dim"])
    cfg_path = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    args = SLConfig.fromfile(str(cfg_path))
    for k, v in MODEL.items():
        setattr(args, k, v)
    args.device = "cpu"
    args.text_encoder_type = str(bert_dir)
    args.use_checkpoint = False
    args.use_transformer_ckpt = False
    return build_model(args).eval()


def seed_official_weights(model) -> dict[str, list[int]]:
    """Set every parameter from :func:`seeded_value`; aliases take the first name in sorted order."""
    sd = model.state_dict(keep_vars=True)
    params = {id(p) for p in model.parameters()}
    done: set[int] = set()
    shapes = {}
    with torch.no_grad():
        for key in sorted(sd):
            t = sd[key]
            if id(t) not in params:
                continue  # buffers (relative_position_index, position_ids, ...) stay as built
            shapes[key] = list(t.shape)
            if id(t) in done:
                continue
            t.copy_(seeded_value(key, t.shape))
            done.add(id(t))
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", required=True, help="bert-base-uncased vocab.txt")
    parser.add_argument("--photo", default=None, help="photo file (default: scikit-image's chelsea)")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
    args = parser.parse_args()

    import groundingdino
    import transformers
    from safetensors.torch import save_file

    torch.set_num_threads(1)  # fixed reduction order in the oracle run
    photo = _photo(args.photo)
    images = [random_image(), normalize(photo)]
    with tempfile.TemporaryDirectory() as tmp:
        model = _build_official(_bert_dir(args.vocab, Path(tmp)))
        shapes = seed_official_weights(model)
        token_ids = [model.tokenizer(c)["input_ids"] for c in CAPTIONS]
        tensors = {"photo_uint8": photo.contiguous()}
        with torch.no_grad():
            for i, img in enumerate(images):
                for j, caption in enumerate(CAPTIONS):
                    out = model(img[None], captions=[caption])
                    n = len(token_ids[j])
                    logits = out["pred_logits"][0]
                    assert torch.isinf(logits[:, n:]).all(), "padding columns must be -inf"
                    tensors[f"logits_{i}_{j}"] = logits[:, :n].contiguous()
                    tensors[f"boxes_{i}_{j}"] = out["pred_boxes"][0].contiguous()

    meta = {
        "generator": "scripts/make_official_golden.py",
        "oracle": {
            "package_file": Path(groundingdino.__file__).parent.name,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "swin": SWIN,
        "bert": BERT,
        "model": MODEL,
        "captions": CAPTIONS,
        "token_ids": token_ids,
        "image_hw": list(IMAGE_HW),
        "random_image_seed": RANDOM_IMAGE_SEED,
        "pairs": "logits_{image}_{caption} [Q, tokens], boxes_{image}_{caption} [Q, 4] cxcywh",
        "official_param_shapes": shapes,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "official_golden.safetensors"))
    (out_dir / "official_golden.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out_dir}/official_golden.{{safetensors,json}} ({len(shapes)} parameters)")


if __name__ == "__main__":
    main()
