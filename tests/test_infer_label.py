"""label_folder in-process: COCO + YOLO output, skipped images, resume from a journal, masks hook."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gdino.core.detections import Detections
from gdino.errors import GdinoError, InputImageError
from gdino.infer.detector import Detector
from gdino.infer.options import DetectOptions
from gdino.label.folder import STATE_DIR, Journal, atomic_write_text, label_folder

CLASSES = ["cat", "remote control"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(tmp_path, chelsea_jpg):
    """5 readable images (nested, odd names, RGBA PNG, grayscale) and 2 unreadable ones."""
    root = tmp_path / "photos"
    (root / "sub dir").mkdir(parents=True)
    cat = Image.open(chelsea_jpg).convert("RGB").resize((96, 64))
    cat.save(root / "a.jpg")
    cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "sub dir" / "chat noir é.png")
    cat.convert("RGBA").save(root / "sub dir" / "b.png")
    cat.convert("L").save(root / "c.jpeg")
    cat.resize((64, 96)).save(root / "d.webp")
    (root / "empty.jpg").write_bytes(b"")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def detector(tiny_model):
    return Detector(tiny_model, image_size=64)


READABLE = ["a.jpg", "c.jpeg", "d.webp", "sub dir/b.png", "sub dir/chat noir é.png"]


def load_coco(out):
    return json.loads((out / "annotations.json").read_text(encoding="utf-8"))


def test_coco_and_yolo_output(folder, tmp_path, detector):
    out = tmp_path / "ds"
    summary = label_folder(
        detector,
        folder,
        out,
        CLASSES,
        options=DetectOptions(image_size=64, box_threshold=0.3),
        formats=["coco", "yolo"],
        progress=False,
    )
    coco = load_coco(out)
    assert sorted(i["file_name"] for i in coco["images"]) == READABLE
    assert coco["categories"] == [
        {"id": 1, "name": "cat", "supercategory": "object"},
        {"id": 2, "name": "remote control", "supercategory": "object"},
    ]
    sizes = {i["file_name"]: (i["width"], i["height"]) for i in coco["images"]}
    assert sizes["d.webp"] == (64, 96) and sizes["a.jpg"] == (96, 64)
    anns = coco["annotations"]
    assert anns and len({a["id"] for a in anns}) == len(anns)
    assert {a["category_id"] for a in anns} <= {1, 2}
    assert all(0.3 < a["score"] <= 1 for a in anns)
    by_id = {i["id"]: i for i in coco["images"]}
    for a in anns:
        x, y, w, h = a["bbox"]
        img = by_id[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 0.01 and y + h <= img["height"] + 0.01
    # the same image through detect() gives the same boxes as the dataset
    a_id = next(i["id"] for i in coco["images"] if i["file_name"] == "a.jpg")
    direct = detector.detect(str(folder / "a.jpg"), CLASSES, box_threshold=0.3)[0]
    assert len(direct) == sum(a["image_id"] == a_id for a in anns)
    # YOLO: one file per readable image, "class cx cy w h" normalized, same boxes as COCO
    lines = (out / "labels" / "train" / "a.txt").read_text().splitlines()
    assert len(lines) == len(direct)
    first = [a for a in anns if a["image_id"] == a_id][0]
    c, cx, cy, w, h = lines[0].split()
    x, y, bw, bh = first["bbox"]
    assert int(c) == first["category_id"] - 1
    assert float(cx) == pytest.approx((x + bw / 2) / 96, abs=1e-4) and float(h) == pytest.approx(bh / 64, abs=1e-4)
    assert (out / "labels" / "train" / "sub dir" / "chat noir é.txt").exists()
    assert (out / "images" / "train" / "sub dir" / "chat noir é.png").resolve() == (
        folder / "sub dir" / "chat noir é.png"
    ).resolve()
    assert (out / "classes.txt").read_text() == "cat\nremote control\n"
    assert "remote control" in (out / "data.yaml").read_text()
    # unreadable images are skipped, with reasons, and counted
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(s["file"] for s in skipped) == ["broken.png", "empty.jpg"]
    assert any("0 bytes" in s["reason"] for s in skipped)
    assert summary.total == 7 and summary.labeled == 5 and len(summary.skipped) == 2 and not summary.failed
    assert "labeled 5 of 7 images" in summary.line() and "skipped 2 unreadable" in summary.line()
    assert summary.detections == len(anns)


def test_resume_after_a_partial_journal(folder, tmp_path, detector):
    out = tmp_path / "ds"
    label_folder(detector, folder, out, CLASSES, progress=False)
    full = load_coco(out)
    journal = out / STATE_DIR / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 7
    # as if killed after 3 images, in the middle of writing the 4th line
    journal.write_bytes(b"".join(lines[:3]) + lines[3][:10])
    (out / "annotations.json").unlink()
    summary = label_folder(detector, folder, out, CLASSES, progress=False)
    labeled_before = sum("error" not in json.loads(line) for line in lines[:3])
    assert summary.resumed == 3 and summary.labeled == 5 - labeled_before
    again = load_coco(out)
    assert [i["file_name"] for i in again["images"]] == [i["file_name"] for i in full["images"]]
    assert len(again["annotations"]) == len(full["annotations"])
    records = [json.loads(x) for x in journal.read_bytes().splitlines()]
    assert sorted(r["file"] for r in records) == sorted(set(r["file"] for r in records))  # once each
    assert len(records) == 7
    # a third run has nothing left to do
    summary = label_folder(detector, folder, out, CLASSES, progress=False)
    assert summary.labeled == 0 and summary.resumed == 7
    assert load_coco(out)["annotations"] == full["annotations"]


def test_other_settings_refuse_to_resume(folder, tmp_path, detector):
    out = tmp_path / "ds"
    label_folder(detector, folder, out, CLASSES, progress=False)
    with pytest.raises(GdinoError, match="other settings .*classes"):
        label_folder(detector, folder, out, ["dog"], progress=False)
    summary = label_folder(detector, folder, out, ["dog"], progress=False, overwrite=True)
    assert summary.resumed == 0 and [c["name"] for c in load_coco(out)["categories"]] == ["dog"]


def test_no_images_and_missing_folder(tmp_path, detector):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputImageError, match="no images found"):
        label_folder(detector, tmp_path / "empty", tmp_path / "out", CLASSES)
    with pytest.raises(InputImageError, match="folder not found"):
        label_folder(detector, tmp_path / "nope", tmp_path / "out", CLASSES)


def test_all_unreadable_counts_as_failed(tmp_path, detector):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "x.jpg").write_bytes(b"")
    summary = label_folder(detector, root, tmp_path / "out", CLASSES, progress=False)
    assert summary.failed and load_coco(tmp_path / "out")["images"] == []


def test_output_inside_the_input_folder_is_not_labeled(folder, detector):
    label_folder(detector, folder, folder / "labels_out", CLASSES, formats=["coco", "yolo"], progress=False)
    summary = label_folder(detector, folder, folder / "labels_out", CLASSES, progress=False, formats=["coco", "yolo"])
    assert summary.total == 7


class FakeSegmenter:
    """A segmenter that fills each box: the hook ``label_folder(segmenter=...)`` relies on."""

    calls = 0

    def segment(self, rgb: np.ndarray, dets: Detections) -> Detections:
        FakeSegmenter.calls += 1
        h, w = rgb.shape[:2]
        masks = torch.zeros(len(dets), h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(dets.xyxy.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        dets.masks, dets.mask_scores = masks, torch.full((len(dets),), 0.9)
        return dets


def test_segmenter_hook_adds_masks(folder, tmp_path, detector):
    from gdino.core.rle import decode_mask

    shutil.rmtree(folder / "sub dir")
    out = tmp_path / "ds"
    label_folder(detector, folder, out, CLASSES, segmenter=FakeSegmenter(), progress=False)
    anns = load_coco(out)["annotations"]
    assert anns and all("segmentation" in a and a["mask_score"] == 0.9 for a in anns)
    m = decode_mask(anns[0]["segmentation"])
    assert m.sum() == anns[0]["area"] > 0
    assert json.loads((out / STATE_DIR / "job.json").read_text())["masks"] is True


def test_journal_and_atomic_write(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.add({"file": "a", "n": 1})
    j.add({"file": "a", "n": 2})  # a file is recorded once
    j.add({"file": "é b", "n": 3})
    j.close()
    assert Journal(tmp_path / "j.jsonl").records == {"a": {"file": "a", "n": 1}, "é b": {"file": "é b", "n": 3}}
    target = tmp_path / "x" / "f.json"
    atomic_write_text(target, "1")
    atomic_write_text(target, "2")
    assert target.read_text() == "2" and [p.name for p in target.parent.iterdir()] == ["f.json"]
