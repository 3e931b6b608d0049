"""LVIS federated Fixed AP (gdino.eval.lvis) against the ``lvis`` package and hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gdino.errors import GdinoError
from gdino.eval.coco import score_coco
from gdino.eval.lvis import limit_per_class, limit_per_image, score_lvis


def toy_lvis(seed: int, n_cats=9, n_images=7, n_anns=45):
    rng = np.random.default_rng(seed)
    cats = [{"id": c + 1, "name": f"thing_{c}", "frequency": "rcf"[c % 3]} for c in range(n_cats)]
    images = [
        {"id": i + 1, "width": 240, "height": 180, "coco_url": f"http://x/val2017/{i:012d}.jpg"}
        for i in range(n_images)
    ]
    anns = []
    for j in range(n_anns):
        w, h = rng.uniform(3, 70, 2)
        box = [float(rng.uniform(0, 160)), float(rng.uniform(0, 110)), float(w), float(h)]
        anns.append(
            {
                "id": j + 1,
                "image_id": int(rng.integers(1, n_images + 1)),
                "category_id": int(rng.integers(1, n_cats + 1)),
                "bbox": box,
                "area": float(w * h),
            }
        )
    for im in images:
        pos = sorted({a["category_id"] for a in anns if a["image_id"] == im["id"]})
        rest = [c for c in range(1, n_cats + 1) if c not in pos]
        im["neg_category_ids"] = [int(c) for c in rng.choice(rest, size=min(3, len(rest)), replace=False)]
        im["not_exhaustive_category_ids"] = pos[:1]
    dets = []
    for a in anns:
        for k in range(4):
            b = np.array(a["bbox"]) + rng.normal(0, 5, 4)
            b[2:] = np.abs(b[2:]) + 1
            cat = a["category_id"] if k < 2 else int(rng.integers(1, n_cats + 1))
            dets.append(
                {"image_id": a["image_id"], "category_id": cat, "bbox": b.tolist(), "score": float(rng.uniform())}
            )
    for _ in range(40):  # background false positives of every kind of category
        dets.append(
            {
                "image_id": int(rng.integers(1, n_images + 1)),
                "category_id": int(rng.integers(1, n_cats + 1)),
                "bbox": [float(rng.uniform(0, 200)), float(rng.uniform(0, 150)), 20.0, 15.0],
                "score": float(rng.uniform()),
            }
        )
    return {"images": images, "annotations": anns, "categories": cats}, dets


def lvis_reference(gt: dict, dets: list[dict], tmp_path, monkeypatch) -> dict:
    """The ``lvis`` package's LVISEval with no per-image limit (its release needs np.float)."""
    lvis = pytest.importorskip("lvis", reason="reference package lvis (in [dev])")
    monkeypatch.setattr(np, "float", float, raising=False)
    path = tmp_path / "lvis_gt.json"
    path.write_text(json.dumps(gt))
    ref_gt = lvis.LVIS(str(path))
    ev = lvis.LVISEval(ref_gt, lvis.LVISResults(ref_gt, [dict(d) for d in dets], max_dets=-1), "bbox")
    ev.run()
    return dict(ev.get_results())


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_lvis_package(seed, tmp_path, monkeypatch):
    gt, dets = toy_lvis(seed)
    ref = lvis_reference(gt, dets, tmp_path, monkeypatch)
    m = score_lvis(gt, dets, topk_per_class=None)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        assert m[key] == pytest.approx(float(ref[key]), abs=1e-9), key
    assert m["AR"] == pytest.approx(float(ref["AR@300"]), abs=1e-9)
    assert 0.05 < m["AP"] < 0.9
    # the federated rules change the result: plain COCO AP on the same data differs
    assert abs(score_coco(gt, dets)["AP"] - m["AP"]) > 1e-3


def test_fixed_ap_cap_equals_reference_on_capped_detections(tmp_path, monkeypatch):
    gt, dets = toy_lvis(2)
    capped = limit_per_class(dets, 5)
    ref = lvis_reference(gt, capped, tmp_path, monkeypatch)
    assert score_lvis(gt, dets, topk_per_class=5)["AP"] == pytest.approx(float(ref["AP"]), abs=1e-9)


def tiny_federated():
    cats = [
        {"id": 1, "name": "cat", "frequency": "f"},
        {"id": 2, "name": "dog", "frequency": "r"},
        {"id": 3, "name": "cow", "frequency": "c"},
    ]
    images = [{"id": 1, "width": 100, "height": 100, "neg_category_ids": [2], "not_exhaustive_category_ids": []}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600.0}]
    return {"images": images, "annotations": anns, "categories": cats}


def test_federated_rules_by_hand():
    gt = tiny_federated()
    tp = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.5}
    fp_cat = {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "score": 0.9}
    assert score_lvis(gt, [tp])["AP"] == pytest.approx(1.0)
    # a false positive of an exhaustively annotated category ranked first halves precision
    assert score_lvis(gt, [tp, fp_cat])["AP"] == pytest.approx(0.5)
    # ... but is ignored when the category is not exhaustively annotated in that image
    gt2 = tiny_federated()
    gt2["images"][0]["not_exhaustive_category_ids"] = [1]
    assert score_lvis(gt2, [tp, fp_cat])["AP"] == pytest.approx(1.0)
    # "cow" is neither present nor verified absent: its detections are dropped (no AP, no harm)
    cow = {"image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 40], "score": 0.99}
    m = score_lvis(gt, [tp, cow])
    assert m["AP"] == pytest.approx(1.0) and m["APc"] == -1.0 and m.per_class["cow"] is None
    # "dog" is verified absent: it has no ground truth, so no AP of its own, and APr is undefined
    dog = {"image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 40], "score": 0.99}
    m = score_lvis(gt, [tp, dog])
    assert m["APf"] == pytest.approx(1.0) and m["APr"] == -1.0


def test_limits():
    dets = [
        {"image_id": i % 2, "category_id": c, "bbox": [0, 0, 1, 1], "score": s}
        for i, (c, s) in enumerate([(1, 0.1), (1, 0.9), (2, 0.5), (1, 0.5), (1, 0.9), (2, 0.2)])
    ]
    kept = limit_per_class(dets, 2)
    assert [(d["category_id"], d["score"]) for d in kept] == [(1, 0.9), (2, 0.5), (1, 0.9), (2, 0.2)]
    assert limit_per_class(dets, 100) == dets
    per_img = limit_per_image(dets, 1)
    assert [(d["image_id"], d["score"]) for d in per_img] == [(1, 0.9), (0, 0.9)]


def test_not_an_lvis_file():
    gt = tiny_federated()
    del gt["images"][0]["neg_category_ids"]
    with pytest.raises(GdinoError, match="image id 1 has no 'neg_category_ids' list"):
        score_lvis(gt, [])
    gt = tiny_federated()
    gt["categories"][0]["frequency"] = "x"
    with pytest.raises(GdinoError, match="category id 1 'cat' has frequency 'x'"):
        score_lvis(gt, [])


def test_faster_coco_eval_lvis_style_is_identical():
    pytest.importorskip("faster_coco_eval", reason="optional backend faster-coco-eval")
    for seed in (4, 5):
        gt, dets = toy_lvis(seed)
        a = score_lvis(gt, dets, topk_per_class=50)
        b = score_lvis(gt, dets, topk_per_class=50, backend="faster-coco-eval")
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR"):
            assert b[key] == pytest.approx(a[key], abs=1e-12), key
