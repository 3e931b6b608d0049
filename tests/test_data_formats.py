"""COCO and ODVG annotation files -> records and dataset items; every documented error."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from gdino.data.coco import load_coco
from gdino.data.dataset import build_dataset
from gdino.data.odvg import load_label_map, load_odvg
from gdino.data.prompts import PromptConfig
from gdino.data.records import sanitize_boxes
from gdino.errors import GdinoError, InputImageError


def write_images(root, sizes: dict[str, tuple[int, int]]) -> None:
    """Blank PNGs of the given ``(height, width)``."""
    for name, (h, w) in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(root / name)


def write_json(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


COCO = {
    "images": [
        {"id": 10, "file_name": "a.png", "height": 40, "width": 60},
        {"id": 11, "file_name": "sub/b.png", "height": 50, "width": 30},
    ],
    "categories": [{"id": 12, "name": "Traffic Light"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [5, 6, 10, 20], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 12, "bbox": [50, 30, 20, 20]},  # clamped to 60x40
        {"id": 3, "image_id": 11, "category_id": 7, "bbox": [1, 2, 3, 4]},
        {"id": 4, "image_id": 11, "category_id": 7, "bbox": [40, 2, 3, 4]},  # outside: dropped
        {"id": 5, "image_id": 11, "category_id": 3, "bbox": [4, 4, 0, 9]},  # zero width: dropped
        {"id": 6, "image_id": 11, "category_id": 3, "bbox": [0, 0, 9, 9], "iscrowd": 1},  # skipped
    ],
}


def test_sanitize_boxes_counts():
    boxes = torch.tensor(
        [[1, 1, 5, 5], [-3, 2, 4, 12], [20, 0, 30, 5], [3, 3, 3, 8], [float("nan"), 0, 1, 1]], dtype=torch.float32
    )
    kept, keep, report = sanitize_boxes(boxes, width=10, height=10)
    assert keep.tolist() == [True, True, False, False, False]
    assert torch.equal(kept, torch.tensor([[1.0, 1, 5, 5], [0, 2, 4, 10]]))
    assert (report.clamped, report.dropped) == (1, 3)


def test_coco_records_and_report(tmp_path, caplog):
    ann = write_json(tmp_path / "ann.json", COCO)
    with caplog.at_level(logging.WARNING):
        parsed = load_coco(ann)
    assert parsed.classes == ["cat", "dog", "traffic light"] and parsed.category_ids == [3, 7, 12]
    a, b = parsed.records
    assert (a.image_id, a.file_name, a.height, a.width) == (10, "a.png", 40, 60)
    assert torch.equal(a.boxes, torch.tensor([[5.0, 6, 15, 26], [50, 30, 60, 40]]))
    assert a.labels.tolist() == [0, 2]
    assert torch.equal(b.boxes, torch.tensor([[1.0, 2, 4, 6]])) and b.labels.tolist() == [1]
    assert a.caption is None and not a.is_grounding
    (msg,) = [r.getMessage() for r in caplog.records if "clamped" in r.getMessage()]
    assert "1 boxes" in msg and "2 degenerate" in msg


def test_coco_dataset_item(tmp_path, tokenizer):
    ann = write_json(tmp_path / "ann.json", COCO)
    write_images(tmp_path, {"a.png": (40, 60), "sub/b.png": (50, 30)})
    ds = build_dataset("coco", ann, tmp_path, tokenizer, train=False)
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 60)
    assert target.size == target.orig_size == (40, 60) and target.image_id == 10
    assert target.caption == "cat . dog . traffic light ."  # eval: every class, in order
    expected = torch.tensor([[10 / 60, 16 / 40, 10 / 60, 20 / 40], [55 / 60, 35 / 40, 10 / 60, 10 / 40]])
    torch.testing.assert_close(target.boxes, expected, atol=1e-6, rtol=0)
    ids = tokenizer(target.caption)["input_ids"]
    names = [tokenizer.decode([ids[t] for t in row.nonzero().flatten().tolist()]) for row in target.token_map]
    assert names == ["cat", "traffic light"]
    assert [target.phrases[i] for i in target.labels] == names


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["annotations"].append({"image_id": 10, "category_id": 99, "bbox": [0, 0, 1, 1]}), "99"),
        (lambda d: d["annotations"].append({"image_id": 77, "category_id": 3, "bbox": [0, 0, 1, 1]}), "77"),
        (lambda d: d["categories"].append({"id": 3, "name": "bird"}), "used twice"),
        (lambda d: d.pop("categories"), "categories"),
        (lambda d: d["annotations"].append({"image_id": 10, "category_id": 3, "bbox": [0, 0, 1]}), "bbox"),
        (lambda d: d["images"][0].pop("height"), "height"),
    ],
)
def test_coco_errors(tmp_path, change, message):
    data = json.loads(json.dumps(COCO))
    change(data)
    with pytest.raises(GdinoError, match=message):
        load_coco(write_json(tmp_path / "ann.json", data))


def test_unreadable_files(tmp_path):
    with pytest.raises(GdinoError, match="annotation file not found"):
        load_coco(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GdinoError, match="not valid JSON"):
        load_coco(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text('{"filename": "a.png"}\n{oops\n')
    with pytest.raises(GdinoError, match=r"bad.jsonl:2"):
        load_odvg(tmp_path / "bad.jsonl")


def test_missing_images_listed_up_front(tmp_path, tokenizer):
    ann = write_json(tmp_path / "ann.json", COCO)
    write_images(tmp_path, {"a.png": (40, 60)})
    with pytest.raises(GdinoError, match=r"1 of 2 images .* missing .*sub/b.png"):
        build_dataset("coco", ann, tmp_path, tokenizer)


def test_empty_dataset(tmp_path, tokenizer):
    ann = write_json(tmp_path / "ann.json", {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    with pytest.raises(GdinoError, match="no images"):
        build_dataset("coco", ann, tmp_path, tokenizer)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(GdinoError, match="no images"):
        build_dataset("odvg", tmp_path / "empty.jsonl", tmp_path, tokenizer, label_map={"0": "a"})


def test_image_size_mismatch(tmp_path, tokenizer):
    ann = write_json(tmp_path / "ann.json", COCO)
    write_images(tmp_path, {"a.png": (41, 60), "sub/b.png": (50, 30)})
    ds = build_dataset("coco", ann, tmp_path, tokenizer)
    with pytest.raises(InputImageError, match="60x41 but its annotation says 60x40"):
        ds[0]


ODVG_DET = [
    {"filename": "a.png", "height": 40, "width": 60, "detection": {"instances": [
        {"bbox": [5, 6, 15, 26], "label": 0, "category": "cat"},
        {"bbox": [50, 30, 70, 50], "label": 2, "category": "traffic light"},
    ]}},
    {"filename": "sub/b.png", "height": 50, "width": 30, "detection": {"instances": [
        {"bbox": [1, 2, 4, 6], "label": 1, "category": "dog"},
        {"bbox": [40, 2, 43, 6], "label": 1, "category": "dog"},
        {"bbox": [4, 4, 4, 13], "label": 0, "category": "cat"},
    ]}},
]  # fmt: skip
LABEL_MAP = {"0": "cat", "1": "dog", "2": "traffic light"}


def test_odvg_detection_matches_coco(tmp_path):
    coco = load_coco(write_json(tmp_path / "ann.json", COCO))
    for label_map in (LABEL_MAP, write_json(tmp_path / "label_map.json", LABEL_MAP), None):
        odvg = load_odvg(write_jsonl(tmp_path / "ann.jsonl", ODVG_DET), label_map)
        assert odvg.classes == coco.classes
        for r, c in zip(odvg.records, coco.records, strict=True):
            assert (r.file_name, r.height, r.width) == (c.file_name, c.height, c.width)
            assert torch.equal(r.boxes, c.boxes) and torch.equal(r.labels, c.labels)


@pytest.mark.parametrize(
    ("label_map", "message"),
    [
        ({"1": "cat", "2": "dog", "3": "traffic light"}, "1-based"),
        ({"0": "cat", "2": "dog"}, r"missing \[1\]"),
        ({"zero": "cat"}, "not an integer"),
        ({"0": "st. bernard"}, "separates"),
        ({}, "empty"),
    ],
)
def test_label_map_errors(label_map, message):
    with pytest.raises(GdinoError, match=message):
        load_label_map(label_map)


def test_odvg_label_errors(tmp_path):
    rows = json.loads(json.dumps(ODVG_DET))
    rows[0]["detection"]["instances"][1]["label"] = 3
    with pytest.raises(GdinoError, match=r"outside the label map's 0..2 \(the labels look 1-based\): 3"):
        load_odvg(write_jsonl(tmp_path / "x.jsonl", rows), LABEL_MAP)
    # Labels shifted by one against the map: every category matches label - 1.
    rows = json.loads(json.dumps(ODVG_DET))
    for row in rows:
        for inst in row["detection"]["instances"]:
            inst["label"] += 1
    with pytest.raises(GdinoError, match="1-based"):
        load_odvg(write_jsonl(tmp_path / "y.jsonl", rows), {**LABEL_MAP, "3": "bird"})
    # Derived from instances, 1-based labels are caught by the label-map check.
    with pytest.raises(GdinoError, match="1-based"):
        load_odvg(write_jsonl(tmp_path / "z.jsonl", rows))


def test_odvg_grounding_records(tmp_path, tokenizer):
    caption = "A man left of a small dog and another small dog"
    rows = [
        {"filename": "a.png", "height": 40, "width": 60, "grounding": {"caption": caption, "regions": [
            {"bbox": [0, 0, 10, 10], "phrase": "small dog", "tokens_positive": [[16, 25]]},
            {"bbox": [[20, 0, 30, 10], [31, 0, 40, 10]], "phrase": "a man", "tokens_positive": [[0, 5]]},
            {"bbox": [40, 5, 50, 15], "phrase": "another small dog"},
            {"bbox": [1, 1, 2, 2], "phrase": "a cat"},  # not in the caption: dropped
        ]}},
    ]  # fmt: skip
    write_images(tmp_path, {"a.png": (40, 60)})
    parsed = load_odvg(write_jsonl(tmp_path / "g.jsonl", rows))
    (rec,) = parsed.records
    assert rec.caption == caption.lower() + "."
    assert [[rec.caption[s:e] for s, e in spans] for spans in rec.phrase_spans] == [
        ["a man"],
        ["small dog"],
        ["another small dog"],
    ]
    assert rec.labels.tolist() == [1, 0, 0, 2]
    assert rec.boxes.shape == (4, 4)

    ds = build_dataset("odvg", tmp_path / "g.jsonl", tmp_path, tokenizer, prompt_cfg=PromptConfig(shuffle=False))
    _, target = ds[0]
    assert target.caption == rec.caption and target.phrases == ["a man", "small dog", "another small dog"]
    ids = tokenizer(target.caption)["input_ids"]
    decoded = [tokenizer.decode([ids[t] for t in row.nonzero().flatten().tolist()]) for row in target.token_map]
    assert decoded == ["small dog", "a man", "a man", "another small dog"]


def test_odvg_record_without_payload(tmp_path):
    with pytest.raises(GdinoError, match="neither 'detection' nor 'grounding'"):
        load_odvg(write_jsonl(tmp_path / "x.jsonl", [{"filename": "a.png", "height": 4, "width": 4}]))


def test_unknown_kind_and_label_map_for_coco(tmp_path, tokenizer):
    with pytest.raises(GdinoError, match="unknown dataset kind"):
        build_dataset("yolo", tmp_path / "x", tmp_path, tokenizer)
    with pytest.raises(GdinoError, match="label_map is for ODVG"):
        build_dataset("coco", tmp_path / "x", tmp_path, tokenizer, label_map=LABEL_MAP)


def test_exif_orientation_follows_the_annotation(tmp_path):
    from gdino.data.dataset import read_image

    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # white left strip in the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=95)
    shown = read_image(tmp_path / "r.jpg", (60, 40))  # annotated in display orientation
    assert shown.shape == (3, 60, 40) and shown[:, :10].float().mean() > 200  # strip now on top
    stored = read_image(tmp_path / "r.jpg", (40, 60))  # annotated on the stored pixels
    assert stored.shape == (3, 40, 60) and stored[:, :, :10].float().mean() > 200
    with pytest.raises(InputImageError, match="cannot read"):
        (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\x00garbage")
        read_image(tmp_path / "bad.jpg")


def test_flipped_grounding_item_has_swapped_caption_and_right_tokens(tmp_path, tokenizer):
    from gdino.data.transforms import TransformConfig, build_train_transform

    caption = "the left hand holds a cup left of the plate"
    rows = [{"filename": "a.png", "height": 40, "width": 60, "grounding": {"caption": caption, "regions": [
        {"bbox": [0, 0, 10, 10], "phrase": "left hand", "tokens_positive": [[4, 13]]},
        {"bbox": [20, 0, 30, 10], "phrase": "cup", "tokens_positive": [[22, 25]]},
        {"bbox": [40, 5, 50, 15], "phrase": "plate", "tokens_positive": [[38, 43]]},
    ]}}]  # fmt: skip
    write_images(tmp_path, {"a.png": (40, 60)})
    flip_only = build_train_transform(TransformConfig(scales=(40,), flip_prob=1.0, crop_prob=0.0))
    ds = build_dataset("odvg", write_jsonl(tmp_path / "g.jsonl", rows), tmp_path, tokenizer, flip_only, seed=0)
    _, target = ds[0]
    assert target.caption == "the right hand holds a cup right of the plate."
    ids = tokenizer(target.caption)["input_ids"]
    decoded = [tokenizer.decode([ids[t] for t in row.nonzero().flatten().tolist()]) for row in target.token_map]
    assert decoded == ["right hand", "cup", "plate"]
    # Boxes mirrored: cxcywh of [0, 0, 10, 10] in a 60-wide image becomes centre x = 55 / 60.
    torch.testing.assert_close(target.boxes[0], torch.tensor([55 / 60, 5 / 40, 10 / 60, 10 / 40]))
