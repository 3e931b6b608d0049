"""``gdino eval --engine ray``: the same detections and metrics as one process, on 2 CPU workers."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from gdino.cli import main
from gdino.eval.annotations import load_coco_gt
from gdino.eval.evaluator import EvalOptions, Evaluator
from gdino.eval.predict import predict_dataset
from gdino.eval.ray_predict import RayPredictor
from gdino.infer.detector import Detector
from gdino.infer.ray_data import RayOptions

ray = pytest.importorskip("ray", reason="test dependency ray (in [dev])")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def dataset(tmp_path, chelsea_jpg, tiny_model):
    """5 photos; ground truth = the model's own best boxes, shifted, so that AP is neither 0 nor 1."""
    root = tmp_path / "images"
    root.mkdir()
    cat = Image.open(chelsea_jpg).convert("RGB").resize((96, 64))
    images = []
    for i in range(5):
        cat.rotate(30 * i).save(root / f"{i}.jpg")
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "width": 96, "height": 64})
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "remote control"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": cats}))
    options = EvalOptions.build(image_size=64, progress=False)
    preds = predict_dataset(Detector(tiny_model, options.detect), load_coco_gt(ann), root, progress=False)
    gt = []
    for image in images:
        best = sorted((p for p in preds if p["image_id"] == image["id"]), key=lambda p: -p["score"])[:2]
        for k, p in enumerate(best):
            x, y, w, h = p["bbox"]
            gt.append(
                {
                    "id": len(gt) + 1,
                    "image_id": image["id"],
                    "category_id": p["category_id"],
                    "bbox": [x + 2 * k, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    ann.write_text(json.dumps({"images": images, "annotations": gt, "categories": cats}))
    return ann, root, options


def test_same_metrics_as_one_process(dataset, tiny_model, tiny_checkpoint):
    ann, root, options = dataset
    single = Evaluator(tiny_model, options)
    one = single.coco(ann, root)
    predictor = RayPredictor(str(tiny_checkpoint), RayOptions(workers=2, shard_size=2))
    distributed = Evaluator(None, options, predictor=predictor)
    many = distributed.coco(ann, root)
    predictor.close()  # joined the module's Ray: does not shut it down
    assert ray.is_initialized()
    assert 0 < one["AP"] < 1 and one["num_detections"] >= 5 * 10
    assert one.keys() == many.keys()
    for key, value in one.items():
        assert many[key] == (pytest.approx(value, abs=1e-9) if isinstance(value, float) else value), key


@pytest.mark.slow  # a second Ray job; the API test above holds the same property
def test_cli_eval_coco_engine_ray(dataset, tiny_model, tiny_checkpoint, tmp_path, capsys):
    ann, root, options = dataset
    one = Evaluator(tiny_model, options).coco(ann, root)
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "coco",
            "--annotations",
            str(ann),
            "--images",
            str(root),
            "--weights",
            str(tiny_checkpoint),
            "--image-size",
            "64",
            "--no-progress",
            "--out",
            str(out),
            "--engine",
            "ray",
            "--workers",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(one["AP"], abs=1e-9) and metrics["AP50"] == pytest.approx(
        one["AP50"], abs=1e-9
    )
    assert "COCO box AP" in capsys.readouterr().out
    assert main(["eval", "refcoco", "--annotations", str(ann), "--images", str(root), "--engine", "ray"]) == 2
    assert "--engine ray covers coco" in capsys.readouterr().err
