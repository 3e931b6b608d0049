"""build_segmenter: names, weights files (strict, safe), offline errors, dtypes; SAM 2 when installed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import SMALL_SAM2, randomize_

pytest.importorskip("segment_anything", reason="segment-anything (in [dev] / [sam])")

from gdino.core.detections import Detections  # noqa: E402
from gdino.errors import CheckpointError, GdinoError  # noqa: E402
from gdino.segment.build import build_segmenter  # noqa: E402
from gdino.segment.names import SEGMENTERS, canonical_name  # noqa: E402
from gdino.segment.sam_model import SAM_PRESETS, SamConfig, build_sam  # noqa: E402


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return randomize_(build_sam(SAM_PRESETS["sam-tiny"]), seed=3).state_dict()


def test_names_and_aliases():
    assert canonical_name("vit_b") == "sam-vit-b"
    assert canonical_name("SAM_VIT_L") == "sam-vit-l"
    assert canonical_name("sam2.1_hiera_tiny") == "sam2.1-hiera-t"
    assert canonical_name("sam2.1-hiera-base-plus") == "sam2.1-hiera-b+"
    assert set(SEGMENTERS) >= {"sam-vit-b", "sam-vit-l", "sam-vit-h", "sam2.1-hiera-t", "sam2.1-hiera-l"}


def test_unknown_name_is_a_one_line_error():
    with pytest.raises(GdinoError, match=r"unknown segmenter 'sam-vit-bb' \(did you mean sam-vit-b\?\)") as e:
        build_segmenter("sam-vit-bb")
    assert "\n" not in str(e.value)


def test_released_sizes_match_segment_anything():
    """Our configs build the same architectures as the package's own builders."""
    from segment_anything import sam_model_registry

    ref = sam_model_registry["vit_b"](checkpoint=None)
    ours = build_sam(SAM_PRESETS["sam-vit-b"])
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 93_735_472
    assert SamConfig.from_dict(SAM_PRESETS["sam-vit-h"].to_dict()) == SAM_PRESETS["sam-vit-h"]


@pytest.mark.parametrize("fmt", ["pth", "pth-model-key", "safetensors"])
def test_weights_load_from_file(tmp_path, tiny_state, fmt):
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "sam.safetensors"
        save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    else:
        path = tmp_path / "sam.pth"
        obj = {"model": {"module." + k: v for k, v in tiny_state.items()}} if fmt == "pth-model-key" else tiny_state
        torch.save(obj, path)
    seg = build_segmenter("sam-tiny", path)
    for k, v in seg.model.state_dict().items():
        assert torch.equal(v, tiny_state[k]), k


def test_weights_of_another_model_are_refused(tmp_path, tiny_state):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_state, path)
    with pytest.raises(
        CheckpointError, match=r"tiny.pth: weights do not match sam-vit-b: .*shape mismatch [0-9]+"
    ) as e:
        build_segmenter("sam-vit-b", path)
    assert "\n" not in str(e.value)
    partial = dict(tiny_state)
    del partial["mask_decoder.iou_token.weight"]
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, path)
    with pytest.raises(
        CheckpointError, match=r"missing 1 \(mask_decoder.iou_token.weight\); unexpected 1 \(extra.weight\)"
    ):
        build_segmenter("sam-tiny", path)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bad_files(tmp_path, tiny_state):
    with pytest.raises(CheckpointError, match="not found"):
        build_segmenter("sam-tiny", tmp_path / "missing.pth")
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot be read as plain weights"):
        build_segmenter("sam-tiny", evil)
    good = tmp_path / "good.pth"
    torch.save(tiny_state, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        build_segmenter("sam-tiny", truncated)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        build_segmenter("sam-tiny", bad_st)


def test_offline_without_weights_says_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(CheckpointError) as e:
        build_segmenter("sam-vit-b")
    msg = str(e.value)
    assert "sam_vit_b_01ec64.pth" in msg and "--segmenter-weights" in msg and "\n" not in msg


def test_segmenter_dtype(tiny_state, tmp_path):
    path = tmp_path / "t.pth"
    torch.save(tiny_state, path)
    seg = build_segmenter("sam-tiny", path, dtype="bf16")
    assert seg.dtype == torch.bfloat16
    with pytest.raises(GdinoError, match="unknown dtype"):
        build_segmenter("sam-tiny", path, dtype="int8")


# ------------------------------------------------------------------ SAM 2 (optional extra)


def test_sam2_segmenter_small_model(tmp_path):
    pytest.importorskip("sam2", reason="sam2 (in [sam2])")
    from gdino.segment.sam2_backend import Sam2Segmenter, build_sam2_model

    torch.manual_seed(0)
    model = randomize_(build_sam2_model("configs/sam2.1/sam2.1_hiera_t.yaml", SMALL_SAM2), seed=0)
    seg = Sam2Segmenter(model)
    calls = []
    model.sam_mask_decoder.register_forward_hook(lambda *a: calls.append(1))
    h, w = 300, 451
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    boxes = torch.tensor([[20.0, 30.0, 200.0, 150.0], [250.0, 100.0, 440.0, 290.0], [5.0, 5.0, 60.0, 60.0]])
    dets = Detections(boxes, torch.ones(3), torch.zeros(3, dtype=torch.long), ["x"] * 3, (w, h))
    out = seg.segment(img, dets)
    assert out.masks.shape == (3, h, w) and out.masks.dtype == torch.bool
    assert out.mask_scores.shape == (3,) and torch.isfinite(out.mask_scores).all()
    assert len(calls) == 1 and seg.stats == {"image_encodes": 1, "decoder_calls": 1}
    # the same masks as the package's own SAM2ImagePredictor for the same image and boxes
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    ref = SAM2ImagePredictor(model)
    s = int(model.image_size)  # the package hard-codes feature sizes for 1024-pixel models
    ref._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    ref.set_image(img)
    ref_masks, ref_iou, _ = ref.predict(box=boxes.numpy(), multimask_output=False)
    ref_masks = torch.from_numpy(ref_masks[:, 0] > 0.5)
    assert 0.01 < out.masks.float().mean() < 0.99  # not a comparison of empty (or full) masks
    assert (out.masks != ref_masks).float().mean() <= 1e-4
    torch.testing.assert_close(out.mask_scores, torch.from_numpy(ref_iou[:, 0]).float(), rtol=1e-4, atol=1e-5)
    multi = Sam2Segmenter(model, multimask=True)
    assert multi.segment(img, dets).mask_scores.shape == (3,)
    empty = seg.segment(img, Detections.empty((w, h)))
    assert empty.masks.shape == (0, h, w)
    # weights round trip through build_segmenter's strict loader (a released config would not fit)
    path = tmp_path / "sam2.pt"
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="weights do not match sam2.1-hiera-t"):
        build_segmenter("sam2.1-hiera-t", path)
