"""RefCOCO loading and the top-1 accuracy metric (gdino.eval.refcoco), and ODinW listings."""

from __future__ import annotations

import json

import pytest

from gdino.errors import GdinoError
from gdino.eval.odinw import load_listing, summarize_odinw
from gdino.eval.refcoco import clean_expression, load_refs, top1_accuracy


def refs_data():
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 100},
            {"id": 2, "file_name": "b.jpg", "width": 100, "height": 100},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30]},
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50]},
        ],
        "refs": [
            {
                "ref_id": 0,
                "image_id": 1,
                "ann_id": 10,
                "split": "val",
                "sentences": [{"sent": "the man on the left"}, {"sent": "Left guy."}],
            },
            {"ref_id": 1, "image_id": 2, "ann_id": 11, "split": "testA", "sentences": ["red car?"]},
        ],
    }


def test_load_refs_expands_sentences_and_splits():
    _, samples = load_refs(refs_data())
    assert [(s.ref_id, s.expression) for s in samples] == [
        (0, "the man on the left"),
        (0, "Left guy."),
        (1, "red car?"),
    ]
    assert samples[0].box == (10.0, 10.0, 30.0, 40.0)
    _, val = load_refs(refs_data(), split="val")
    assert len(val) == 2 and {s.image_id for s in val} == {1}
    with pytest.raises(GdinoError, match=r"no referring expressions in split 'testB' \(splits: testA, val\)"):
        load_refs(refs_data(), split="testB")


def test_load_refs_errors(tmp_path):
    d = refs_data()
    d["refs"][1]["ann_id"] = 99
    with pytest.raises(GdinoError, match=r"refs\[1\]: ann_id 99 is not in 'annotations'"):
        load_refs(d)
    d = refs_data()
    d["refs"][0]["image_id"] = 5
    with pytest.raises(GdinoError, match=r"refs\[0\]: image_id 5 is not in 'images'"):
        load_refs(d)
    d = refs_data()
    d["refs"][0]["sentences"] = []
    with pytest.raises(GdinoError, match="non-empty 'sentences'"):
        load_refs(d)
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"images": []}))
    with pytest.raises(GdinoError, match=r"r\.json: expected a JSON object with a 'refs' list"):
        load_refs(f)


def test_clean_expression():
    assert clean_expression("  The man. On the LEFT? ") == "the man on the left"
    assert clean_expression(" . ? ") == ""


def test_top1_accuracy_hand_made():
    target = (0.0, 0.0, 10.0, 10.0)
    preds = [
        (0.0, 0.0, 10.0, 10.0),  # IoU 1
        (0.0, 0.0, 10.0, 5.0),  # IoU exactly 0.5: counts (>=)
        (0.0, 0.0, 10.0, 4.9),  # IoU 0.49: miss
        (20.0, 20.0, 30.0, 30.0),  # disjoint
        None,  # no prediction
    ]
    assert top1_accuracy(preds, [target] * 5) == pytest.approx(2 / 5)
    assert top1_accuracy(preds[:1], [target], iou_threshold=0.99) == 1.0
    assert top1_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        top1_accuracy([None], [])


# ------------------------------------------------------------------------------------ ODinW
def test_odinw_listing_yaml_json_and_errors(tmp_path):
    (tmp_path / "l.yaml").write_text(
        "root: data\ndatasets:\n  - name: boats\n    annotations: boats/test.json\n    images: boats/img\n"
        "  - annotations: fish/ann.json\n    images: fish\n"
    )
    entries = load_listing(tmp_path / "l.yaml")
    assert [e.name for e in entries] == ["boats", "fish"]
    assert entries[0].annotations == (tmp_path / "data").resolve() / "boats/test.json"
    (tmp_path / "l.json").write_text(json.dumps([{"name": "x", "annotations": "a.json", "images": "i"}]))
    assert load_listing(tmp_path / "l.json")[0].images == tmp_path / "i"
    (tmp_path / "bad.yaml").write_text("datasets:\n  - name: x\n    images: i\n")
    with pytest.raises(GdinoError, match=r"datasets\[0\] needs 'annotations' and 'images'"):
        load_listing(tmp_path / "bad.yaml")
    (tmp_path / "dup.json").write_text(json.dumps([{"name": "x", "annotations": "a", "images": "i"}] * 2))
    with pytest.raises(GdinoError, match=r"datasets\[1\] repeats the name 'x'"):
        load_listing(tmp_path / "dup.json")
    (tmp_path / "broken.yaml").write_text("datasets: [a, {")
    with pytest.raises(GdinoError, match="not valid YAML"):
        load_listing(tmp_path / "broken.yaml")
    with pytest.raises(GdinoError, match="listing not found"):
        load_listing(tmp_path / "none.yaml")


def test_odinw_mean_and_median():
    s = summarize_odinw({"a": 0.1, "b": 0.5, "c": 0.3, "d": -1.0})
    assert s["mean_AP"] == pytest.approx(0.9 / 4) and s["median_AP"] == pytest.approx(0.2) and s["num_datasets"] == 4
    with pytest.raises(GdinoError):
        summarize_odinw({})
