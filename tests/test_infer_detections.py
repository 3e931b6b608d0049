"""``Detections``: container behaviour, NMS, JSON/COCO/supervision exports, drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gdino.core.detections import Detections
from gdino.infer.draw import PALETTE, draw_detections, text_color


def make(n_masks: bool = False) -> Detections:
    xyxy = torch.tensor([[10.0, 10, 50, 50], [12, 12, 52, 52], [100, 100, 150, 140], [11, 11, 50, 50]])
    masks = None
    if n_masks:
        masks = torch.zeros(4, 160, 200, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(xyxy.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
    return Detections(
        xyxy=xyxy,
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6]),
        class_ids=torch.tensor([0, 0, 1, 1]),
        labels=["cat", "cat", "dog", "dog"],
        image_size=(200, 160),
        class_names=["cat", "dog"],
        image="x.jpg",
        masks=masks,
        mask_scores=torch.tensor([0.95, 0.9, 0.85, 0.8]) if n_masks else None,
    )


def test_container_protocol():
    d = make()
    assert len(d) == 4
    assert d[0].labels == ["cat"] and len(d[1:3]) == 2
    assert d[torch.tensor([False, True, False, True])].labels == ["cat", "dog"]
    assert d[[2, 0]].scores.tolist() == pytest.approx([0.7, 0.9])
    assert d.sort().scores.tolist() == sorted(d.scores.tolist(), reverse=True)
    both = Detections.concat([d[:1], d[2:]])
    assert both.labels == ["cat", "dog", "dog"] and both.class_names == ["cat", "dog"]
    empty = Detections.empty((5, 6), ["a"])
    assert len(empty) == 0 and empty.to_dict()["detections"] == [] and empty.to_coco() == []
    with pytest.raises(ValueError, match="disagree"):
        Detections(torch.zeros(2, 4), torch.zeros(1), torch.zeros(2), ["a", "b"], (1, 1))


def test_nms_is_class_aware_by_default():
    d = make()
    kept = d.nms(0.5)
    # box 1 overlaps box 0 (same class) -> dropped; box 3 overlaps box 0 but is another class
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert d.nms(0.5, class_agnostic=True).scores.tolist() == pytest.approx([0.9, 0.7])
    phrase = Detections(d.xyxy, d.scores, torch.full((4,), -1), ["cat", "cat", "dog", "dog"], d.image_size)
    assert phrase.nms(0.5).scores.tolist() == pytest.approx([0.9, 0.7, 0.6])


def test_clip():
    d = Detections(torch.tensor([[-5.0, -1, 300, 90]]), [0.5], [0], ["a"], (200, 80))
    assert d.clip().xyxy.tolist() == [[0, 0, 200, 80]]


def test_json_and_coco():
    d = make()
    doc = json.loads(d.to_json())
    assert doc["image"] == "x.jpg" and doc["width"] == 200 and doc["height"] == 160
    assert doc["classes"] == ["cat", "dog"]
    assert doc["detections"][0] == {"label": "cat", "score": 0.9, "box": [10.0, 10.0, 50.0, 50.0], "class_id": 0}
    anns = d.to_coco(image_id=7, start_id=100)
    assert anns[2]["bbox"] == [100.0, 100.0, 50.0, 40.0] and anns[2]["area"] == 2000.0
    assert anns[2]["category_id"] == 2 and anns[2]["image_id"] == 7 and anns[2]["id"] == 102
    assert d.to_coco(category_ids=[5, 9])[2]["category_id"] == 9
    no_class = Detections(d.xyxy[:1], [0.5], [-1], ["thing"], (200, 160))
    assert "class_id" not in no_class.to_dict()["detections"][0]
    assert no_class.to_coco()[0]["category_id"] == 0


def test_masks_export_as_rle():
    pytest.importorskip("pycocotools", reason="test dependency pycocotools (in [dev])")
    from pycocotools import mask as mask_utils

    d = make(n_masks=True)
    anns = d.to_coco()
    rle = anns[0]["segmentation"]
    assert rle["size"] == [160, 200]
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), d.masks[0].numpy())
    assert anns[0]["area"] == 40 * 40 and anns[0]["mask_score"] == pytest.approx(0.95)
    doc = d.to_dict()
    assert doc["detections"][0]["mask"]["size"] == [160, 200]
    assert len(d[1:].masks) == 3


def test_to_supervision():
    sv = pytest.importorskip("supervision", reason="optional export; supervision is in [dev]")
    out = make(n_masks=True).to_supervision()
    assert isinstance(out, sv.Detections) and len(out) == 4
    np.testing.assert_allclose(out.xyxy[2], [100, 100, 150, 140])
    assert out.class_id.tolist() == [0, 0, 1, 1]
    assert list(out.data["class_name"]) == ["cat", "cat", "dog", "dog"]
    assert out.mask.shape == (4, 160, 200)


def test_to_supervision_without_the_package_is_a_clear_error(monkeypatch):
    import builtins

    from gdino.errors import GdinoError

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "supervision":
            raise ImportError("no supervision")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(GdinoError, match="pip install supervision"):
        make().to_supervision()


def test_draw_boxes_and_masks():
    img = Image.new("RGB", (200, 160), (40, 40, 40))
    out = draw_detections(img, make())
    assert out.size == img.size and out.mode == "RGB"
    arr = np.asarray(out)
    assert (arr != 40).any() and np.asarray(img).max() == 40  # drawn on a copy
    with_masks = np.asarray(draw_detections(img, make(n_masks=True)))
    inside = with_masks[30, 30]  # mask interior: tinted, not the raw background
    assert tuple(inside) != (40, 40, 40)
    # empty detections draw nothing
    assert np.array_equal(np.asarray(draw_detections(img, Detections.empty((200, 160)))), np.asarray(img))


def test_text_color_is_readable():
    assert text_color((255, 255, 255)) == (0, 0, 0)
    assert text_color((0, 0, 120)) == (255, 255, 255)
    assert len(set(PALETTE)) == len(PALETTE)
