"""Running the tiny model through the evaluators (gdino.eval.predict / evaluator) on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gdino.core.preprocess import PreprocessConfig, preprocess
from gdino.errors import InputImageError
from gdino.eval.annotations import load_coco_gt
from gdino.eval.coco import score_coco
from gdino.eval.evaluator import EVAL_DETECT, Evaluator, evaluate_coco, evaluate_lvis
from gdino.eval.predict import image_path, predict_dataset
from gdino.infer.detector import Detector

SIZE = 64  # shorter side the tests run at (fast)


def write_dataset(root, names=("cat", "remote control"), sizes=((96, 64), (80, 80)), lvis=False):
    """A COCO-format dataset of random images; returns the annotation path."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        img = {"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h}
        if lvis:
            img = {
                "id": i + 1,
                "coco_url": f"http://h/val2017/{i}.png",
                "width": w,
                "height": h,
                "neg_category_ids": [2],
                "not_exhaustive_category_ids": [],
            }
        images.append(img)
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [5.0, 6.0, 30.0, 20.0],
                "area": 600.0,
                "iscrowd": 0,
            }
        )
    cats = [{"id": k + 1, "name": n, **({"frequency": "rcf"[k % 3]} if lvis else {})} for k, n in enumerate(names)]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    if lvis:  # LVIS keeps images in <split>/<name>
        (root / "img" / "val2017").mkdir(exist_ok=True)
        for i in range(len(sizes)):
            (root / "img" / f"{i}.png").rename(root / "img" / "val2017" / f"{i}.png")
    return path


def reference_predictions(model, gt, images_dir, prompt, topk):
    """Official COCO post-processing written out directly: per chunk, sigmoid(logits) @ pmᵀ,
    top-k over all (query, class) pairs of all chunks, cxcywh -> xyxy in original pixels."""
    cat_ids = sorted(gt.getCatIds())
    out = []
    config = PreprocessConfig(SIZE, round(SIZE * 1333 / 800))
    for image_id in sorted(gt.getImgIds()):
        img = Image.open(images_dir / gt.imgs[image_id]["file_name"]).convert("RGB")
        pixels = preprocess(img, config)[None]
        scores, boxes, classes = [], [], []
        for chunk in prompt.chunks:
            with torch.no_grad():
                res = model(pixels, model.tokenize([chunk.caption]))
            probs = res.logits[0].sigmoid()  # [Q, 256]
            s = probs @ chunk.positive_map[:, : probs.shape[-1]].T  # [Q, C]
            scores.append(s.reshape(-1))
            boxes.append(res.boxes[0].repeat_interleave(s.shape[1], 0))
            classes.append(torch.tensor(chunk.class_indices).repeat(s.shape[0]))
        s, b, c = torch.cat(scores), torch.cat(boxes), torch.cat(classes)
        top = s.topk(min(topk, s.numel()))
        for score, i in zip(top.values.tolist(), top.indices.tolist()):
            cx, cy, w, h = b[i].tolist()
            x0, y0 = (cx - w / 2) * img.width, (cy - h / 2) * img.height
            out.append(
                {
                    "image_id": image_id,
                    "category_id": cat_ids[int(c[i])],
                    "score": score,
                    "bbox": [x0, y0, w * img.width, h * img.height],
                }
            )
    return out


def assert_same_predictions(got, ref):
    assert len(got) == len(ref)
    key = lambda d: (d["image_id"], -d["score"])  # noqa: E731
    for g, r in zip(sorted(got, key=key), sorted(ref, key=key)):
        assert g["image_id"] == r["image_id"] and g["category_id"] == r["category_id"]
        assert g["score"] == pytest.approx(r["score"], abs=1e-5)
        np.testing.assert_allclose(g["bbox"], r["bbox"], atol=1e-3)


def test_predictions_follow_the_official_protocol(tiny_model, tmp_path):
    ann = write_dataset(tmp_path)
    gt = load_coco_gt(ann)
    detector = Detector(tiny_model, EVAL_DETECT, image_size=SIZE, topk=30)
    got = predict_dataset(detector, gt, tmp_path / "img", progress=False)
    ref = reference_predictions(tiny_model, gt, tmp_path / "img", detector.prompt(["cat", "remote control"]), 30)
    assert_same_predictions(got, ref)
    # unclipped, as the official post-processor: random boxes do leave the image
    assert len(got) == 60


def test_chunked_prompt_encodes_each_image_once(tiny_model, tmp_path):
    names = [f"small red wooden object number {k}" for k in range(50)]  # ~8 tokens each: 2 chunks
    ann = write_dataset(tmp_path, names=names, sizes=((96, 64),))
    gt = load_coco_gt(ann)
    detector = Detector(tiny_model, EVAL_DETECT, image_size=SIZE, topk=40)
    prompt = detector.prompt(names)
    assert len(prompt.chunks) >= 2
    got = predict_dataset(detector, gt, tmp_path / "img", progress=False)
    assert detector.stats["image_encodes"] == 1
    assert detector.stats["forwards"] == len(prompt.chunks)
    assert_same_predictions(got, reference_predictions(tiny_model, gt, tmp_path / "img", prompt, 40))


def test_evaluate_coco_api_and_outputs(tiny_model, tmp_path):
    ann = write_dataset(tmp_path)
    was_training = tiny_model.training
    res = evaluate_coco(tiny_model, ann, tmp_path / "img", out_dir=tmp_path / "out", image_size=SIZE, progress=False)
    assert tiny_model.training == was_training
    assert set(res) >= {"AP", "AP50", "AR@100", "per_class", "num_images", "num_detections"}
    assert res["num_images"] == 2 and res["num_detections"] == 2 * 50 * 2
    assert res["per_class"]["remote control"] is None
    dets = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert score_coco(ann, dets)["AP"] == pytest.approx(res["AP"], abs=1e-12)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(res["AP"])
    for name in ("pr_curves.png", "pr_per_class.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    one = Evaluator(tiny_model, image_size=SIZE, progress=False, max_images=1).coco(ann, tmp_path / "img")
    assert one["num_images"] == 1


def test_evaluate_lvis_and_odinw(tiny_model, tmp_path):
    ann = write_dataset(tmp_path / "lvis", names=("bottle_cap", "dog", "cow"), lvis=True)
    res = evaluate_lvis(tiny_model, ann, tmp_path / "lvis" / "img", image_size=SIZE, progress=False, topk=20)
    assert {"APr", "APc", "APf", "AR"} <= set(res) and res["num_detections"] <= 40
    assert res["APc"] == -1.0  # "dog" (common) is verified absent only: no ground truth
    a = write_dataset(tmp_path / "d1", sizes=((96, 64),))
    write_dataset(tmp_path / "d2", names=("bird",), sizes=((64, 64),))
    listing = tmp_path / "odinw.json"
    listing.write_text(
        json.dumps(
            {
                "datasets": [
                    {"name": "one", "annotations": str(a), "images": str(tmp_path / "d1" / "img")},
                    {"name": "two", "annotations": "d2/ann.json", "images": "d2/img"},
                ]
            }
        )
    )
    ev = Evaluator(tiny_model, image_size=SIZE, progress=False, topk=10)
    out = ev.odinw(listing, out_dir=tmp_path / "odinw_out")
    assert list(out["datasets"]) == ["one", "two"] and out["num_datasets"] == 2
    aps = [max(r["AP"], 0.0) for r in out["datasets"].values()]
    assert out["mean_AP"] == pytest.approx(sum(aps) / 2) and out["median_AP"] == pytest.approx(sum(aps) / 2)
    assert (tmp_path / "odinw_out" / "two" / "metrics.json").is_file()


def test_refcoco_prediction_is_top_box_of_expression(tiny_model, tmp_path):
    ann = write_dataset(tmp_path)
    data = json.loads(ann.read_text())
    data["refs"] = [
        {
            "ref_id": 7,
            "image_id": 1,
            "ann_id": 1,
            "split": "val",
            "sentences": [{"sent": "The cat on the left."}, "a cat"],
        },
        {"ref_id": 8, "image_id": 2, "ann_id": 2, "split": "val", "sentences": ["?", "cat " * 300]},
    ]
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(data))
    res = Evaluator(tiny_model, image_size=SIZE, progress=False).refcoco(path, tmp_path / "img", split="val")
    preds = res["predictions"]
    # an empty expression and one too long for the text encoder count as misses
    assert res["num_expressions"] == 4 and preds[2]["box"] is None and preds[3]["box"] is None
    expected = Detector(tiny_model, image_size=SIZE).detect(
        str(tmp_path / "img" / "0.png"), ["the cat on the left"], 0.0, topk=1, clip=False
    )[0]
    np.testing.assert_allclose(preds[0]["box"], expected.xyxy[0].tolist(), atol=1e-4)
    from gdino.eval.refcoco import top1_accuracy

    assert res["accuracy"] == top1_accuracy([p["box"] for p in preds], [p["target"] for p in preds])


def test_missing_image_is_reported_before_running(tiny_model, tmp_path):
    ann = write_dataset(tmp_path)
    (tmp_path / "img" / "1.png").unlink()
    with pytest.raises(InputImageError, match=r"ann\.json: image id 2: file not found \(.*1\.png\)"):
        evaluate_coco(tiny_model, ann, tmp_path / "img", image_size=SIZE, progress=False)
    with pytest.raises(InputImageError, match="neither 'file_name' nor 'coco_url'"):
        image_path(tmp_path, {"id": 3})
