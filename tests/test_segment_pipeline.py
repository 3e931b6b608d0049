"""Grounded-SAM end to end in the API: tiny detector + tiny random SAM on the real cat photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

pytest.importorskip("segment_anything", reason="segment-anything (in [dev] / [sam])")

from gdino.core.rle import decode_mask  # noqa: E402
from gdino.infer.detector import Detector  # noqa: E402
from gdino.segment.predictor import SamSegmenter  # noqa: E402
from gdino.segment.sam_model import SAM_PRESETS, build_sam  # noqa: E402

FAST = {"image_size": 128, "box_threshold": 0.05}  # random weights: a low threshold finds boxes
CLASSES = ["cat", "remote control"]


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return randomize_(build_sam(SAM_PRESETS["sam-tiny"]), seed=2).eval()


@pytest.fixture(scope="module")
def photo(chelsea_jpg):
    return np.asarray(Image.open(chelsea_jpg).convert("RGB"))


def _counting(sam):
    calls = {"enc": 0, "dec": 0}
    hooks = [
        sam.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1)),
        sam.mask_decoder.register_forward_hook(lambda *a: calls.__setitem__("dec", calls["dec"] + 1)),
    ]
    return calls, hooks


def test_masks_for_every_box_scores_kept(tiny_model, sam, chelsea_jpg, photo):
    calls, hooks = _counting(sam)
    try:
        out = Detector(tiny_model).segment([chelsea_jpg, photo], CLASSES, SamSegmenter(sam), **FAST)
    finally:
        for h in hooks:
            h.remove()
    plain = Detector(tiny_model).detect([chelsea_jpg, photo], CLASSES, **FAST)
    h, w = photo.shape[:2]
    assert len(out) == 2
    for dets, ref in zip(out, plain):
        assert len(dets) > 0
        assert dets.masks.shape == (len(dets), h, w) and dets.masks.dtype == torch.bool
        assert dets.mask_scores.shape == (len(dets),)
        torch.testing.assert_close(dets.xyxy, ref.xyxy)  # the boxes and the detector's scores are untouched
        torch.testing.assert_close(dets.scores, ref.scores)
        assert dets.labels == ref.labels
        assert not torch.equal(dets.mask_scores, dets.scores)
    assert calls == {"enc": 2, "dec": 2}  # one embedding and one decoder call per image


def test_no_boxes_is_an_empty_result(tiny_model, sam, chelsea_jpg):
    seg = SamSegmenter(sam)
    out = Detector(tiny_model).segment(chelsea_jpg, CLASSES, seg, box_threshold=1.0, image_size=128)
    assert len(out[0]) == 0 and out[0].masks.shape == (0, 300, 451)
    assert seg.stats["image_encodes"] == 0


def test_bf16_detector_with_fp32_sam(tiny_model, sam, chelsea_jpg, photo):
    """Detector under bf16 autocast, SAM in float32: SAM sees exactly the boxes it was given."""
    seg = SamSegmenter(sam)
    out = Detector(tiny_model).segment(chelsea_jpg, CLASSES, seg, dtype="bf16", **FAST)[0]
    assert seg.dtype == torch.float32 and len(out) > 0
    again = seg.segment(photo, out)  # SAM alone, outside any autocast
    assert torch.equal(again.masks, out.masks)
    torch.testing.assert_close(again.mask_scores, out.mask_scores, atol=0, rtol=0)


def test_segment_repeatable_and_multimask(tiny_model, sam, chelsea_jpg):
    detector = Detector(tiny_model)
    a = detector.segment(chelsea_jpg, CLASSES, SamSegmenter(sam), **FAST)[0]
    b = Detector(tiny_model).segment(chelsea_jpg, CLASSES, SamSegmenter(sam), **FAST)[0]
    assert torch.equal(a.masks, b.masks)
    multi = detector.segment(chelsea_jpg, CLASSES, SamSegmenter(sam, multimask=True), **FAST)[0]
    assert multi.mask_scores.shape == b.mask_scores.shape and not torch.equal(multi.mask_scores, b.mask_scores)


def test_phrase_mode_and_per_image_prompts(tiny_model, sam, chelsea_jpg):
    out = Detector(tiny_model).segment(
        [chelsea_jpg, chelsea_jpg], ["a cat .", ["cat", "dog"]], SamSegmenter(sam), per_image=True, **FAST
    )
    assert [d.masks.shape[1:] for d in out] == [(300, 451), (300, 451)]


def test_json_and_coco_exports_have_rle_masks(tiny_model, sam, chelsea_jpg):
    dets = Detector(tiny_model).segment(chelsea_jpg, CLASSES, SamSegmenter(sam), **FAST)[0]
    doc = dets.to_dict()  # what gdino segment prints
    assert len(doc["detections"]) == len(dets)
    for i, d in enumerate(doc["detections"]):
        assert np.array_equal(decode_mask(d["mask"]), dets.masks[i].numpy())
        assert d["mask_score"] == round(float(dets.mask_scores[i]), 4)
        assert d["score"] == round(float(dets.scores[i]), 4)
    anns = dets.to_coco(image_id=7)  # the COCO export writes the same RLE, area = mask pixels
    for i, ann in enumerate(anns):
        assert np.array_equal(decode_mask(ann["segmentation"]), dets.masks[i].numpy())
        assert ann["area"] == int(dets.masks[i].sum()) and ann["image_id"] == 7
        assert ann["score"] == round(float(dets.scores[i]), 5) and ann["mask_score"] == round(
            float(dets.mask_scores[i]), 5
        )


def test_drawing_overlays_translucent_masks(tiny_model, sam, chelsea_jpg, photo):
    from gdino.infer.draw import color_for, draw_detections

    dets = Detector(tiny_model).segment(chelsea_jpg, CLASSES, SamSegmenter(sam), **FAST)[0][:1]
    mask = np.zeros((300, 451), bool)
    mask[100:200, 150:300] = True  # a known mask far from the box edges' tags
    dets.masks = torch.from_numpy(mask)[None]
    dets.xyxy = torch.tensor([[140.0, 90.0, 310.0, 210.0]])
    drawn = np.asarray(draw_detections(Image.fromarray(photo), dets, mask_alpha=0.5)).astype(float)
    color = np.array(color_for(dets, 0), float)
    inner = drawn[130:170, 180:270]
    expected = 0.5 * photo[130:170, 180:270] + 0.5 * color
    assert np.abs(inner - expected).max() <= 1.0  # translucent fill, not opaque
    assert np.abs(drawn[100, 200] - color).max() <= 1.0  # outline in the solid color
    assert np.array_equal(drawn[250:290, 20:100], photo[250:290, 20:100].astype(float))  # outside: untouched
