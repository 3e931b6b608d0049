"""mmdetection's ``.pth`` layout (MM-Grounding-DINO, LLMDet), tested both ways.

gdino -> mmdetection -> gdino is exact; and an mmdetection file written by gdino, converted to the
Hugging Face layout by this test's own reading of the published mmdetection -> transformers key table
(transformers' ``convert_mm_grounding_dino_to_hf.py``), equals what gdino writes for transformers.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import randomize_
from torch.nn import functional as F

from gdino.cli import main as cli_main
from gdino.config import get_preset
from gdino.errors import CheckpointError
from gdino.model.grounding_dino import build_model
from gdino.weights.load import load_model, save_hf, save_mmdet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["tiny-mm", "tiny"])
def model(request, tokenizer):
    torch.manual_seed(0)
    return randomize_(build_model(get_preset(request.param), tokenizer), seed=7).eval()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_through_mmdet(model, tmp_path):
    path = tmp_path / "mm.pth"
    save_mmdet(model, path)
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"state_dict", "meta"}
    state = obj["state_dict"]
    assert "backbone.patch_embed.projection.weight" in state and "query_embedding.weight" in state
    assert "bbox_head.reg_branches.2.4.bias" in state  # the encoder's box head after 2 decoder layers
    if model.config.contrastive_bias:
        assert state["bbox_head.cls_branches.0.bias"].shape == (1,)  # mmdetection's shape
    back = load_model(path, tokenizer=model.tokenizer)
    assert back.config == model.config and _same(back, model)


def test_architecture_inferred_without_gdino_meta(model, tmp_path):
    """A file as mmdetection writes it (no gdino config): the shapes and heads give the architecture."""
    path = tmp_path / "mm.pth"
    save_mmdet(model, path)
    obj = torch.load(path, weights_only=True)
    torch.save({"state_dict": obj["state_dict"], "meta": {"epoch": 12}}, path)
    back = load_model(path, config=None, tokenizer=model.tokenizer)
    assert _same(back, model)
    cfg, want = back.config, model.config
    assert (cfg.contrastive_scale, cfg.contrastive_bias) == (want.contrastive_scale, want.contrastive_bias)
    assert cfg.share_box_head == want.share_box_head and cfg.num_feature_levels == want.num_feature_levels


def test_llmdet_training_leftovers_skipped_unknown_keys_refused(tokenizer, tmp_path):
    model = randomize_(build_model(get_preset("tiny-mm"), tokenizer), seed=8)
    path = tmp_path / "llmdet.pth"
    save_mmdet(model, path)
    obj = torch.load(path, weights_only=True)
    extras = {
        "lmm.model.layers.0.weight": torch.zeros(2),
        "connector.0.weight": torch.zeros(2),
        "region_connector.0.bias": torch.zeros(2),
        "image_seperate.weight": torch.zeros(2),
        "ref_point_head.layers.0.weight": torch.zeros(2),
        "dn_query_generator.label_embedding.weight": torch.zeros(256, 64),
    }
    torch.save({"state_dict": {**obj["state_dict"], **extras}, "meta": obj["meta"]}, path)
    assert _same(load_model(path, tokenizer=tokenizer), model)
    torch.save(
        {"state_dict": {**obj["state_dict"], "bbox_head.extra.weight": torch.zeros(1)}, "meta": obj["meta"]}, path
    )
    with pytest.raises(CheckpointError, match="unexpected 1 .*bbox_head.extra.weight"):
        load_model(path, tokenizer=tokenizer)


def test_cli_convert_to_and_from_mmdet(model, tmp_path):
    native, mm, back = tmp_path / "a.safetensors", tmp_path / "b.pth", tmp_path / "c.safetensors"
    from gdino.weights.load import save_model

    save_model(model, native)
    assert cli_main(["convert", str(native), str(mm), "--format", "mmdet"]) == 0
    assert cli_main(["convert", str(mm), str(back)]) == 0
    assert _same(load_model(back, tokenizer=model.tokenizer), model)


def test_patch_merging_order_matches_unfold():
    """mmdetection merges 2x2 patches with nn.Unfold; the official Swin concatenates the four
    positions. The converted reduction weight gives the same output on the same feature map."""
    from gdino.weights.mmdet import to_mmdet_values, to_official_values

    gen = torch.Generator().manual_seed(0)
    c, out = 3, 5
    x = torch.randn(1, c, 4, 6, generator=gen)  # NCHW
    unfolded = F.unfold(x, kernel_size=2, stride=2).transpose(1, 2)  # [1, L, 4C], mmdetection's order
    xs = x.permute(0, 2, 3, 1)  # NHWC, the official code's blocks
    official = torch.cat([xs[:, 0::2, 0::2], xs[:, 1::2, 0::2], xs[:, 0::2, 1::2], xs[:, 1::2, 1::2]], -1).flatten(1, 2)
    w_mm = torch.randn(out, 4 * c, generator=gen)
    key = "backbone.stages.0.downsample.reduction.weight"
    w_official = to_official_values({key: w_mm})[key]
    assert torch.allclose(unfolded @ w_mm.T, official @ w_official.T, atol=1e-6)
    assert torch.equal(to_mmdet_values({key: w_official})[key], w_mm)
    assert torch.equal(w_official, w_mm[:, _column_order(c)])  # the explicit index formula agrees
    norm_key = "backbone.stages.0.downsample.norm.weight"
    v = torch.randn(4 * c, generator=gen)
    assert torch.equal(to_official_values({norm_key: v})[norm_key], v[_column_order(c)])


def _column_order(c: int) -> list[int]:
    """Official channel k*C + ch comes from unfold channel ch*4 + p, p the unfold position of block k."""
    official_blocks = [(0, 0), (1, 0), (0, 1), (1, 1)]
    unfold_positions = [(0, 0), (0, 1), (1, 0), (1, 1)]
    return [ch * 4 + unfold_positions.index(official_blocks[k]) for k in range(4) for ch in range(c)]


# ------------------------------------------------------------------ an independent mmdet -> HF map
_SUBS = [  # (mmdetection pattern, transformers replacement), read off the published table
    (
        r"backbone\.patch_embed\.projection\.",
        "model.backbone.conv_encoder.model.embeddings.patch_embeddings.projection.",
    ),
    (r"backbone\.patch_embed\.norm\.", "model.backbone.conv_encoder.model.embeddings.norm."),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.relative_position_bias_table",
        r"model.backbone.conv_encoder.model.encoder.layers.\1.blocks.\2.attention.self.relative_position_bias_table",
    ),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm1\.",
        r"model.backbone.conv_encoder.model.encoder.layers.\1.blocks.\2.layernorm_before.",
    ),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm2\.",
        r"model.backbone.conv_encoder.model.encoder.layers.\1.blocks.\2.layernorm_after.",
    ),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.proj\.",
        r"model.backbone.conv_encoder.model.encoder.layers.\1.blocks.\2.attention.output.dense.",
    ),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.",
        r"model.backbone.conv_encoder.model.encoder.layers.\1.blocks.\2.intermediate.dense.",
    ),
    (
        r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\.",
        r"model.backbone.conv_encoder.model.encoder.layers.\1.blocks.\2.output.dense.",
    ),
    (r"backbone\.stages\.(\d+)\.downsample\.", r"model.backbone.conv_encoder.model.encoder.layers.\1.downsample."),
    (r"language_model\.language_backbone\.body\.model\.", "model.text_backbone."),
    (r"text_feat_map\.", "model.text_projection."),
    (r"encoder\.fusion_layers\.(\d+)\.gamma_v", r"model.encoder.layers.\1.fusion_layer.vision_param"),
    (r"encoder\.fusion_layers\.(\d+)\.gamma_l", r"model.encoder.layers.\1.fusion_layer.text_param"),
    (r"encoder\.fusion_layers\.(\d+)\.layer_norm_v\.", r"model.encoder.layers.\1.fusion_layer.layer_norm_vision."),
    (r"encoder\.fusion_layers\.(\d+)\.layer_norm_l\.", r"model.encoder.layers.\1.fusion_layer.layer_norm_text."),
    (
        r"encoder\.fusion_layers\.(\d+)\.attn\.(values_|out_)?v_proj\.",
        r"model.encoder.layers.\1.fusion_layer.attn.\2vision_proj.",
    ),
    (
        r"encoder\.fusion_layers\.(\d+)\.attn\.(values_|out_)?l_proj\.",
        r"model.encoder.layers.\1.fusion_layer.attn.\2text_proj.",
    ),
    (r"encoder\.layers\.(\d+)\.self_attn\.", r"model.encoder.layers.\1.deformable_layer.self_attn."),
    (r"encoder\.layers\.(\d+)\.norms\.0\.", r"model.encoder.layers.\1.deformable_layer.self_attn_layer_norm."),
    (r"encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"model.encoder.layers.\1.deformable_layer.fc1."),
    (r"encoder\.layers\.(\d+)\.ffn\.layers\.1\.", r"model.encoder.layers.\1.deformable_layer.fc2."),
    (r"encoder\.layers\.(\d+)\.norms\.1\.", r"model.encoder.layers.\1.deformable_layer.final_layer_norm."),
    (r"encoder\.text_layers\.(\d+)\.self_attn\.attn\.", r"model.encoder.layers.\1.text_enhancer_layer.self_attn."),
    (r"encoder\.text_layers\.(\d+)\.norms\.0\.", r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_before."),
    (r"encoder\.text_layers\.(\d+)\.ffn\.layers\.0\.0\.", r"model.encoder.layers.\1.text_enhancer_layer.fc1."),
    (r"encoder\.text_layers\.(\d+)\.ffn\.layers\.1\.", r"model.encoder.layers.\1.text_enhancer_layer.fc2."),
    (r"encoder\.text_layers\.(\d+)\.norms\.1\.", r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_after."),
    (r"decoder\.norm\.", "model.decoder.layer_norm."),
    (r"decoder\.ref_point_head\.", "model.decoder.reference_points_head."),
    (r"decoder\.layers\.(\d+)\.self_attn\.attn\.", r"model.decoder.layers.\1.self_attn."),
    (r"decoder\.layers\.(\d+)\.norms\.0\.", r"model.decoder.layers.\1.self_attn_layer_norm."),
    (r"decoder\.layers\.(\d+)\.cross_attn_text\.attn\.", r"model.decoder.layers.\1.encoder_attn_text."),
    (r"decoder\.layers\.(\d+)\.norms\.1\.", r"model.decoder.layers.\1.encoder_attn_text_layer_norm."),
    (r"decoder\.layers\.(\d+)\.cross_attn\.", r"model.decoder.layers.\1.encoder_attn."),
    (r"decoder\.layers\.(\d+)\.norms\.2\.", r"model.decoder.layers.\1.encoder_attn_layer_norm."),
    (r"decoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"model.decoder.layers.\1.fc1."),
    (r"decoder\.layers\.(\d+)\.ffn\.layers\.1\.", r"model.decoder.layers.\1.fc2."),
    (r"decoder\.layers\.(\d+)\.norms\.3\.", r"model.decoder.layers.\1.final_layer_norm."),
    (r"level_embed", "model.level_embed"),
    (r"query_embedding\.", "model.query_position_embeddings."),
    (r"memory_trans_fc\.", "model.enc_output."),
    (r"memory_trans_norm\.", "model.enc_output_norm."),
]


def _mmdet_to_hf(state, layers: int, n_maps: int) -> dict:
    out = {}
    for key, v in state.items():
        if key.endswith("relative_position_index"):
            continue
        m = re.fullmatch(r"backbone\.norm(\d+)\.(weight|bias)", key)
        if m:
            out[f"model.backbone.conv_encoder.model.hidden_states_norms.stage{int(m.group(1)) + 1}.{m.group(2)}"] = v
            continue
        m = re.fullmatch(r"neck\.(convs|extra_convs)\.(\d+)\.(conv|gn)\.(.*)", key)
        if m:
            i = int(m.group(2)) + (n_maps if m.group(1) == "extra_convs" else 0)
            out[f"model.input_proj_vision.{i}.{0 if m.group(3) == 'conv' else 1}.{m.group(4)}"] = v
            continue
        m = re.fullmatch(r"bbox_head\.(cls|reg)_branches\.(\d+)\.(\d+\.)?(weight|bias)", key)
        if m:
            kind, i, j, leaf = m.groups()
            if kind == "cls":
                head = "model.encoder_output_class_embed" if int(i) == layers else f"class_embed.{i}"
                out[f"{head}.{leaf}"] = v.reshape(())
            else:
                head = "model.encoder_output_bbox_embed" if int(i) == layers else f"bbox_embed.{i}"
                out[f"{head}.layers.{int(j[:-1]) // 2}.{leaf}"] = v
            continue
        if re.search(r"(attn\.w_msa\.qkv|\.attn\.in_proj_)", key):  # fused q/k/v -> three
            base = re.sub(r"\.attn\.w_msa\.qkv\.(weight|bias)$", r".attn.w_msa.SPLIT.\1", key)
            base = re.sub(r"\.in_proj_(weight|bias)$", r".SPLIT.\1", base)
            for name, part in zip(("query", "key", "value"), v.chunk(3)):
                mapped = _rename(base)
                if ".blocks." in mapped:
                    mapped = mapped.replace("SPLIT", f"attention.self.{name}")
                else:
                    mapped = mapped.replace("SPLIT", name)
                out[mapped] = part
            continue
        if ".downsample." in key:  # unfold order -> the official order, by explicit indices
            v = v[..., _column_order(v.shape[-1] // 4)]
        out[_rename(key)] = v
    return out


def _rename(key: str) -> str:
    if ".SPLIT." in key and ".blocks." in key:
        m = re.fullmatch(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.SPLIT\.(\w+)", key)
        return f"model.backbone.conv_encoder.model.encoder.layers.{m.group(1)}.blocks.{m.group(2)}.SPLIT.{m.group(3)}"
    for pattern, repl in _SUBS:
        new, n = re.subn(rf"^{pattern}", repl, key)
        if n:
            return new
    raise AssertionError(f"no rule for {key}")


def test_mmdet_file_maps_to_the_hf_layout_by_the_published_table(tokenizer, tmp_path):
    from safetensors.torch import load_file

    model = randomize_(build_model(get_preset("tiny-mm"), tokenizer), seed=9)
    save_mmdet(model, tmp_path / "mm.pth")
    save_hf(model, tmp_path / "hf")
    mm_state = torch.load(tmp_path / "mm.pth", weights_only=True)["state_dict"]
    ours = _mmdet_to_hf(mm_state, model.config.dec_layers, len(model.config.backbone.out_indices))
    written = {
        k: v
        for k, v in load_file(str(tmp_path / "hf" / "model.safetensors")).items()
        if not k.endswith("relative_position_index")
    }
    assert ours.keys() == written.keys()
    assert all(torch.equal(ours[k], written[k]) for k in ours)
