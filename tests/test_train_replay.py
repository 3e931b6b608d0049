"""Pseudo-label replay: merging the starting model's confident detections into the annotations."""

from __future__ import annotations

import pytest

from gdino.train.replay import merge_pseudo_labels


def coco():
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 100, "width": 100},
            {"id": 2, "file_name": "b.png", "height": 100, "width": 100},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "blue square"}],
    }


def det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}


def test_confident_boxes_join_as_new_categories():
    data = coco()
    results = [
        det(1, 1, [60, 60, 20, 20], 0.9),  # kept: red circle on image 1
        det(1, 1, [61, 61, 20, 20], 0.8),  # duplicate of the one above: NMS drops it
        det(1, 2, [11, 11, 20, 20], 0.95),  # on the annotated blue square (IoU 0.82): the annotation wins
        det(2, 2, [5, 5, 30, 30], 0.7),  # kept: green star on image 2
        det(2, 1, [50, 50, 10, 10], 0.2),  # below the threshold
    ]
    merged, added = merge_pseudo_labels(data, results, {1: "red circle", 2: "green star"}, threshold=0.3)
    assert added == 2
    assert merged["categories"] == [
        {"id": 1, "name": "blue square"},
        {"id": 2, "name": "red circle"},
        {"id": 3, "name": "green star"},
    ]
    new = [a for a in merged["annotations"] if a.get("pseudo")]
    assert [(a["image_id"], a["category_id"], a["id"]) for a in new] == [(1, 2, 8), (2, 3, 9)]
    assert new[0]["bbox"] == pytest.approx([60, 60, 20, 20]) and new[0]["area"] == pytest.approx(400)
    assert data == coco()  # the input is not modified


def test_a_replayed_class_that_is_already_a_category_keeps_its_id():
    merged, added = merge_pseudo_labels(coco(), [det(2, 5, [0, 0, 10, 10], 0.9)], {5: "blue square"}, threshold=0.5)
    assert added == 1 and len(merged["categories"]) == 1 and merged["annotations"][-1]["category_id"] == 1


def test_class_agnostic_nms_keeps_one_label_per_object():
    results = [
        det(2, 1, [40, 40, 20, 20], 0.6),  # red circle
        det(2, 2, [41, 41, 20, 20], 0.5),  # green star on the same object (IoU 0.82): kept per class only
        det(2, 2, [0, 0, 10, 10], 0.4),  # another object: kept either way
    ]
    names = {1: "red circle", 2: "green star"}
    _, per_class = merge_pseudo_labels(coco(), results, names, threshold=0.3)
    merged, agnostic = merge_pseudo_labels(coco(), results, names, threshold=0.3, class_agnostic=True)
    assert per_class == 3 and agnostic == 2
    kept = [(a["category_id"], a["bbox"][0]) for a in merged["annotations"] if a.get("pseudo")]
    assert kept == [(2, pytest.approx(40)), (3, pytest.approx(0))]
