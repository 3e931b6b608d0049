"""COCO scoring (gdino.eval.coco, annotations, report) on small synthetic datasets."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from gdino.errors import GdinoError
from gdino.eval.annotations import category_names, load_coco_gt, load_detections
from gdino.eval.coco import score_coco
from gdino.eval.report import (
    format_table,
    per_class_table,
    percent,
    plot_class_pr_curves,
    plot_pr_curves,
    summary_table,
    write_json,
)

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "ARs", "ARm", "ARl"]


def one_box_gt(boxes=([0.0, 0.0, 100.0, 100.0],), cat=1):
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": cat, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],
    }


def random_dataset(seed: int, n_images=6, n_anns=50, n_cats=4):
    rng = np.random.default_rng(seed)
    images = [{"id": 10 + i, "file_name": f"{i}.jpg", "width": 300, "height": 200} for i in range(n_images)]
    cats = [{"id": 3 * c + 1, "name": f"class_{c}"} for c in range(n_cats)]
    cat_ids = [c["id"] for c in cats]
    anns, dets = [], []
    for j in range(n_anns):
        w, h = rng.uniform(3, 120, 2)
        box = [float(rng.uniform(0, 200)), float(rng.uniform(0, 120)), float(w), float(h)]
        anns.append(
            {
                "id": j + 1,
                "image_id": int(rng.choice([im["id"] for im in images])),
                "category_id": int(rng.choice(cat_ids)),
                "bbox": box,
                "area": w * h,
                "iscrowd": int(j % 17 == 0),
            }
        )
    for a in anns:
        for k in range(3):
            b = np.array(a["bbox"]) + rng.normal(0, 6, 4)
            b[2:] = np.abs(b[2:]) + 0.5
            cat = a["category_id"] if k < 2 else int(rng.choice(cat_ids))
            dets.append(
                {"image_id": a["image_id"], "category_id": cat, "bbox": b.tolist(), "score": float(rng.uniform())}
            )
    return {"images": images, "categories": cats, "annotations": anns}, dets


def pycocotools_stats(gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        res = coco.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco, res, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


# ---------------------------------------------------------------------------------- known values
def test_perfect_detections_give_ap_one():
    gt, _ = random_dataset(0)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    m = score_coco(gt, perfect)
    for key in ("AP", "AP50", "AP75", "AR@100"):
        assert m[key] == pytest.approx(1.0, abs=1e-12)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in m.per_class.values())


def test_box_with_iou_078_counts_at_six_of_ten_thresholds():
    # det [0,0,100,78] vs gt [0,0,100,100]: IoU 0.78 -> true positive at IoU 0.50..0.75 only
    m = score_coco(one_box_gt(), [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 78], "score": 0.5}])
    assert m["AP"] == pytest.approx(0.6, abs=1e-12)
    assert m["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert m["AP75"] == pytest.approx(1.0, abs=1e-12)
    assert m.per_class == {"cat": pytest.approx(0.6, abs=1e-12), "dog": None}


def test_half_recall_and_false_positive_order():
    gt = one_box_gt([[0, 0, 50, 50], [100, 100, 50, 50]])
    tp = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50]}
    fp = {"image_id": 1, "category_id": 1, "bbox": [60, 0, 30, 30]}
    # recall reaches 0.5 with precision 1: 51 of the 101 recall points
    m = score_coco(gt, [{**tp, "score": 0.9}, {**fp, "score": 0.8}])
    assert m["AP"] == pytest.approx(51 / 101, abs=1e-12)
    # the false positive ranked first halves the precision at that recall
    m = score_coco(gt, [{**tp, "score": 0.8}, {**fp, "score": 0.9}])
    assert m["AP"] == pytest.approx(0.5 * 51 / 101, abs=1e-12)
    assert m["AR@100"] == pytest.approx(0.5, abs=1e-12)


def test_wrong_class_and_duplicate():
    dup = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": s} for s in (0.9, 0.8)]
    assert score_coco(one_box_gt(), dup)["AP"] == pytest.approx(1.0, abs=1e-12)  # the duplicate comes after recall 1
    wrong = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 100], "score": 0.9}]
    m = score_coco(one_box_gt(), wrong)
    assert m["AP"] == 0.0 and m.per_class["cat"] == 0.0 and m.per_class["dog"] is None


def test_no_detections_gives_zero_not_an_error():
    m = score_coco(one_box_gt(), [])
    assert m["AP"] == 0.0 and m.num_detections == 0


def test_image_subset():
    gt = one_box_gt()
    gt["images"].append({"id": 2, "file_name": "b.jpg", "width": 10, "height": 10})
    gt["annotations"].append({"id": 9, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0})
    det = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9}]
    assert score_coco(gt, det)["AP"] == pytest.approx(51 / 101, abs=1e-12)
    assert score_coco(gt, det, image_ids=[1])["AP"] == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------- vs references
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_detections_match_pycocotools(seed):
    gt, dets = random_dataset(seed)
    ev = pycocotools_stats(gt, dets)
    m = score_coco(gt, dets)
    np.testing.assert_allclose([m[k] for k in KEYS], ev.stats, atol=1e-6, rtol=0)
    assert 0.05 < m["AP"] < 0.95  # a non-trivial case
    # per-class AP = pycocotools' precision averaged per category
    p = ev.eval["precision"][:, :, :, 0, -1]
    for k, cid in enumerate(ev.params.catIds):
        v = p[:, :, k]
        assert m.per_class[gt["categories"][[c["id"] for c in gt["categories"]].index(cid)]["name"]] == pytest.approx(
            float(v[v > -1].mean()), abs=1e-9
        )


def test_faster_coco_eval_is_identical():
    pytest.importorskip("faster_coco_eval", reason="optional backend faster-coco-eval")
    for seed in (3, 4):
        gt, dets = random_dataset(seed)
        a = score_coco(gt, dets)
        b = score_coco(gt, dets, backend="faster-coco-eval")
        np.testing.assert_allclose([b[k] for k in KEYS], [a[k] for k in KEYS], atol=1e-12, rtol=0)
        np.testing.assert_allclose(b.precision, a.precision, atol=1e-12, rtol=0)


def test_max_dets_and_files(tmp_path):
    gt, dets = random_dataset(5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    m = score_coco(tmp_path / "gt.json", str(tmp_path / "dt.json"), max_dets=(1, 10, 100))
    assert m["AP"] == pytest.approx(pycocotools_stats(gt, dets).stats[0], abs=1e-6)
    m1 = score_coco(gt, dets, max_dets=(1,))
    assert m1["AP"] < m["AP"] and "AR@1" in m1.summary


# ---------------------------------------------------------------------------------- bad input
def test_bad_annotation_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GdinoError, match=r"bad\.json: not valid JSON"):
        load_coco_gt(bad)
    with pytest.raises(GdinoError, match="missing.json: annotation file not found"):
        load_coco_gt(tmp_path / "missing.json")
    gt = one_box_gt()
    del gt["categories"]
    with pytest.raises(GdinoError, match="missing the 'categories' list"):
        load_coco_gt(gt)
    gt = one_box_gt()
    gt["annotations"][0]["category_id"] = 5
    with pytest.raises(GdinoError, match=r"annotations\[0\] \(id 1\): category_id 5 is not in 'categories'"):
        load_coco_gt(gt)
    gt = one_box_gt()
    gt["annotations"][0]["bbox"] = [1, 2, "x", 4]
    with pytest.raises(GdinoError, match=r"annotations\[0\].*bbox must be 4 finite numbers"):
        load_coco_gt(gt)
    gt = one_box_gt()
    gt["images"].append(dict(gt["images"][0]))
    with pytest.raises(GdinoError, match=r"images\[1\] repeats id 1"):
        load_coco_gt(gt)


def test_bad_detections(tmp_path):
    gt = load_coco_gt(one_box_gt())
    ok = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    cases = [
        ({"x": 1}, "must be a JSON list"),
        ([ok, {**ok, "image_id": 7}], r"entry 1: image_id 7 is not in the ground truth's images"),
        ([{**ok, "category_id": 9}], r"entry 0: category_id 9 is not in the ground truth's categories"),
        ([{k: v for k, v in ok.items() if k != "score"}], r"entry 0: missing 'score'"),
        ([{**ok, "score": float("nan")}], "score must be a finite number"),
        ([{**ok, "bbox": [0, 0, -1, 2]}], "negative width or height"),
        ([3], "entry 0: expected an object"),
    ]
    for data, pattern in cases:
        with pytest.raises(GdinoError, match=pattern):
            load_detections(data, gt, name="dets.json")
    f = tmp_path / "dets.json"
    f.write_text("[1, 2")
    with pytest.raises(GdinoError, match=r"dets\.json: not valid JSON"):
        load_detections(f, gt)
    with pytest.raises(GdinoError, match="unknown COCO backend"):
        score_coco(one_box_gt(), [], backend="nope")


def test_annotations_are_completed_and_names_cleaned():
    gt = one_box_gt()
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"]
    gt["categories"][1]["name"] = "traffic_light"
    coco = load_coco_gt(gt)
    assert coco.anns[1]["area"] == 10000.0 and coco.anns[1]["iscrowd"] == 0
    assert category_names(coco) == ([1, 2], ["cat", "traffic light"])


# ---------------------------------------------------------------------------------- reports
def test_report_outputs(tmp_path):
    gt, dets = random_dataset(6)
    m = score_coco(gt, dets)
    assert percent(0.4843) == "48.4" and percent(-1.0) == "-" and percent(None) == "-"
    table = summary_table(m.summary)
    assert table.splitlines()[0].split() == KEYS
    assert table.splitlines()[2].split()[0] == f"{100 * m['AP']:.1f}"
    rows = per_class_table({"a": 0.5, "b": None, "c": 0.75}).splitlines()
    assert [r.split()[0] for r in rows[2:]] == ["c", "a", "b"]
    assert format_table([["x", "1"]]) == "x  1"
    path = write_json(tmp_path / "out" / "m.json", {**m.to_dict(), "nan": float("nan")})
    back = json.loads(path.read_text())
    assert back["AP"] == pytest.approx(m["AP"]) and back["nan"] is None and len(back["per_class"]) == 4
    for png in (
        plot_pr_curves(m.precision, m.recall_thresholds, m.iou_thresholds, tmp_path / "pr.png"),
        plot_class_pr_curves(m.precision, m.recall_thresholds, m.iou_thresholds, m.class_names, tmp_path / "cls.png"),
    ):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
