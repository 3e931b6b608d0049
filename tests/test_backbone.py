"""Swin backbone against transformers' SwinBackbone (an independent implementation) on the same weights."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_

from gdino.config import SwinConfig
from gdino.model.backbone import REGION_MASK_VALUE, SwinTransformer, relative_position_index, shift_region_mask

CFG = SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, drop_path_rate=0.0)


def _hf_backbone(cfg: SwinConfig):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.SwinConfig(
        embed_dim=cfg.embed_dim,
        depths=list(cfg.depths),
        num_heads=list(cfg.num_heads),
        window_size=cfg.window_size,
        out_features=[f"stage{i + 1}" for i in cfg.out_indices],
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.SwinBackbone(hf_cfg).eval()


def _hf_state_from_gdino(model: SwinTransformer, hf) -> dict[str, torch.Tensor]:
    """Map gdino (official) Swin names onto transformers' names (both 4.x and 5.x attention names)."""
    hf_names = set(hf.state_dict())
    q_name = "query" if any(".attention.self.query." in n for n in hf_names) else "q_proj"
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name.endswith("relative_position_index"):
            continue
        n = name.replace("patch_embed.proj", "embeddings.patch_embeddings.projection")
        n = n.replace("patch_embed.norm", "embeddings.norm").replace("layers.", "encoder.layers.")
        if n.startswith("norm"):
            out[f"hidden_states_norms.stage{int(n[4]) + 1}.{n.split('.', 1)[1]}"] = t
            continue
        if ".attn.qkv." in n:
            c = t.shape[0] // 3
            base, leaf = n.split(".attn.qkv.")
            names = ["query", "key", "value"] if q_name == "query" else ["q_proj", "k_proj", "v_proj"]
            prefix = f"swin.{base}.attention.self." if q_name == "query" else f"swin.{base}.attention."
            for i, part in enumerate(names):
                out[f"{prefix}{part}.{leaf}"] = t[i * c : (i + 1) * c]
            continue
        if ".attn.relative_position_bias_table" in n:
            cand = [
                h
                for h in hf_names
                if h.startswith("swin." + n.split(".attn.")[0] + ".") and h.endswith("relative_position_bias_table")
            ]
            out[cand[0]] = t
            continue
        if ".attn.proj." in n:
            leaf = n.rsplit(".", 1)[1]
            dense = "attention.output.dense" if q_name == "query" else "attention.o_proj"
            out["swin." + n.split(".attn.proj.")[0] + f".{dense}.{leaf}"] = t
            continue
        n = n.replace(".norm1.", ".layernorm_before.").replace(".norm2.", ".layernorm_after.")
        if ".mlp." in n and not any(h.endswith(n.split("blocks.")[1]) for h in hf_names):
            n = n.replace(".mlp.fc1.", ".intermediate.dense.").replace(".mlp.fc2.", ".output.dense.")
        out["swin." + n] = t
    return out


@pytest.mark.parametrize("size", [(288, 320), (300, 333)])
def test_swin_matches_transformers(size):
    torch.manual_seed(0)
    model = randomize_(SwinTransformer(CFG), seed=3).eval()
    hf = _hf_backbone(CFG)
    state = _hf_state_from_gdino(model, hf)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected
    assert all(m.endswith("relative_position_index") or m.startswith("swin.layernorm") for m in missing), missing
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        theirs = hf(x).feature_maps
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_relative_position_index_and_shift_mask():
    idx = relative_position_index(2)
    # 2x2 window: token (0,0) vs (1,1) has offset (-1,-1) -> (0,0) in the shifted table -> index 0
    assert idx.shape == (4, 4) and idx[0, 3].item() == 0 and idx[3, 0].item() == 8 and idx[0, 0].item() == 4
    mask = shift_region_mask(14, 14, 7, 3, torch.device("cpu"))
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()  # the top-left window holds a single region
    assert set(mask[3].unique().tolist()) == {0.0, REGION_MASK_VALUE}


def test_region_mask_gives_the_official_results_without_denormals(monkeypatch):
    """The -1e4 region mask against the official -100: the same feature maps bit for bit, every
    gradient equal but for differences below the smallest normal float (the -100 probabilities are
    denormals, the region mask's exact zeros)."""
    import gdino.model.backbone as backbone

    x = torch.randn(2, 3, 150, 170, generator=torch.Generator().manual_seed(2))
    results = {}
    for value in (-100.0, REGION_MASK_VALUE):
        monkeypatch.setattr(backbone, "REGION_MASK_VALUE", value)
        model = randomize_(SwinTransformer(CFG), seed=4).train()
        maps = model(x)
        sum((m * torch.linspace(-1, 1, m.shape[-1])).sum() for m in maps).backward()
        results[value] = ([m.detach() for m in maps], {n: p.grad for n, p in model.named_parameters()})
        scores = torch.zeros(49) + shift_region_mask(14, 14, 7, 3, torch.device("cpu"))[3, 0]
        probs = scores.softmax(-1)
        tiny = (probs > 0) & (probs < torch.finfo(torch.float32).tiny)
        assert tiny.any() == (value == -100.0)  # -100 leaves denormals, the region mask exact zeros
    (official_maps, official_grads), (maps, grads) = results[-100.0], results[REGION_MASK_VALUE]
    assert all(torch.equal(a, b) for a, b in zip(maps, official_maps))
    for name, grad in grads.items():
        assert (grad - official_grads[name]).abs().max() < torch.finfo(torch.float32).tiny, name


def test_output_strides_and_odd_sizes():
    model = SwinTransformer(CFG).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 97, 131))
    # patch 4 (ceil), then merging halves with ceil
    assert [m.shape[-2:] for m in maps] == [(13, 17), (7, 9), (4, 5)]
    assert [m.shape[1] for m in maps] == [64, 128, 256]


def test_checkpointing_gives_equal_gradients():
    torch.manual_seed(0)
    model = randomize_(SwinTransformer(CFG), seed=1).train()
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.use_checkpoint = flag
        sum(m.sum() for m in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h,w,shift", [(14, 14, 0), (14, 14, 3), (9, 17, 3), (5, 3, 3), (20, 11, 0)])
def test_window_index_equals_official_pad_roll_partition(h, w, shift):
    """One gather with ``window_index`` = pad right/bottom, roll by -shift, partition (and back)."""
    import torch.nn.functional as F

    from gdino.model.backbone import window_index, window_partition

    ws, c = 7, 5
    x = torch.randn(2, h, w, c)
    padded = F.pad(x, (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2)) if shift else padded
    want = window_partition(rolled, ws)  # [B*nW, ws*ws, C]
    index = window_index(h, w, ws, shift, x.device)
    got = x.reshape(2, h * w, c).index_select(1, index.source)
    got[:, index.padding] = 0
    assert torch.equal(got.view(-1, ws * ws, c), want)
    back = got.index_select(1, index.slot).view(2, h, w, c)
    assert torch.equal(back, x)


@pytest.mark.parametrize("shifted", [False, True])
def test_written_out_window_attention_equals_the_fused_kernel(shifted):
    """CPU training writes window attention out (the official order); inference runs
    ``scaled_dot_product_attention``: the same outputs, and gradients as float64's."""
    from gdino.model.backbone import WindowAttention

    torch.manual_seed(0)
    attn = randomize_(WindowAttention(24, 7, 3), seed=5)
    x = torch.randn(16, 49, 24)  # two images of 2 x 4 windows
    mask = shift_region_mask(14, 28, 7, 3, torch.device("cpu")) if shifted else None
    with torch.no_grad():
        fused = attn(x, mask)
    written = attn(x, mask)
    assert written.grad_fn is not None
    torch.testing.assert_close(written, fused, atol=1e-6, rtol=1e-5)
    grad = torch.randn(written.shape)
    got = torch.autograd.grad(written, list(attn.parameters()), grad)
    double = WindowAttention(24, 7, 3).double()
    double.load_state_dict(attn.state_dict())
    want = torch.autograd.grad(double(x.double(), mask), list(double.parameters()), grad.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)
