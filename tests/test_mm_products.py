"""Every product runs unchanged on MM-Grounding-DINO / LLMDet weights: a small random model of that
head variant saved in the Hugging Face layout (as transformers writes the released ones) is used by
detect, label, segment, eval and train (fine-tuning) through the command line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_
from PIL import Image

from gdino.cli import main
from gdino.config import get_preset
from gdino.model.grounding_dino import build_model
from gdino.weights.load import load_model, save_hf

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--device", "cpu", "--image-size", "96"]


@pytest.fixture(scope="module")
def mm_folder(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(build_model(get_preset("tiny-mm"), tokenizer), seed=11)
    folder = tmp_path_factory.mktemp("mm") / "tiny-mm-hf"
    save_hf(model, folder)
    return folder


def test_detect_reads_the_mm_head(mm_folder, chelsea_jpg, capsys):
    assert json.loads((mm_folder / "config.json").read_text())["model_type"] == "mm-grounding-dino"
    code = main(
        [
            "detect",
            str(chelsea_jpg),
            "--weights",
            str(mm_folder),
            "--classes",
            "cat,remote control",
            "--box-threshold",
            "0.0",
            *FAST,
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    dets = doc["results"][0]["detections"]
    assert dets and {d["label"] for d in dets} <= {"cat", "remote control"}
    # the scores are the biased class head's: recompute the best one from a direct forward
    model = load_model(mm_folder)
    from gdino.infer.detector import Detector

    again = Detector(model, image_size=96).detect(str(chelsea_jpg), ["cat", "remote control"], box_threshold=0.0)
    assert max(d["score"] for d in dets) == pytest.approx(
        float(again[0].scores.max()), abs=1e-4
    )  # JSON keeps 4 decimals


def test_label_writes_a_dataset(mm_folder, chelsea_jpg, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(chelsea_jpg).save(photos / "a.jpg")
    out = tmp_path / "dataset"
    code = main(
        [
            "label",
            str(photos),
            "--classes",
            "cat,dog",
            "--out",
            str(out),
            "--weights",
            str(mm_folder),
            "--box-threshold",
            "0.05",
            "--no-progress",
            *FAST,
        ]
    )
    assert code == 0, capsys.readouterr().err
    files = {p.name for p in out.rglob("*") if p.is_file()}
    assert any(name.endswith(".json") for name in files)


def test_segment_with_a_sam(mm_folder, chelsea_jpg, tmp_path, capsys):
    pytest.importorskip("segment_anything", reason="segment-anything (in [dev] / [sam])")
    from gdino.segment.sam_model import SAM_PRESETS, build_sam

    torch.manual_seed(0)
    sam = randomize_(build_sam(SAM_PRESETS["sam-tiny"]), seed=4)
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    code = main(
        [
            "segment",
            str(chelsea_jpg),
            "--classes",
            "cat",
            "--weights",
            str(mm_folder),
            "--segmenter",
            "sam-tiny",
            "--segmenter-weights",
            str(tmp_path / "sam.pth"),
            "--box-threshold",
            "0.0",
            *FAST,
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    dets = doc["results"][0]["detections"]
    assert dets and all("mask" in d or "rle" in d or "segmentation" in d for d in dets)


def _coco(tmp_path, chelsea_jpg, names):
    images = tmp_path / "img"
    images.mkdir()
    Image.open(chelsea_jpg).save(images / "1.jpg")
    Image.open(chelsea_jpg).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "2.jpg")
    gt = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 451, "height": 300} for i in (1, 2)],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [120, 20, 200, 260], "area": 52000, "iscrowd": 0}
            for i in (1, 2)
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return tmp_path / "gt.json", images


def test_eval_coco(mm_folder, chelsea_jpg, tmp_path, capsys):
    ann, images = _coco(tmp_path, chelsea_jpg, ["cat", "remote control"])
    code = main(
        [
            "eval",
            "coco",
            "--annotations",
            str(ann),
            "--images",
            str(images),
            "--weights",
            str(mm_folder),
            "--topk",
            "20",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            *FAST,
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["num_detections"] == 40 and 0.0 <= metrics["AP"] <= 1.0


def test_finetune_from_mm_weights(mm_folder, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "smoke",
            f"model.weights={mm_folder}",
            "model.text_weights=null",
            "data.synthetic=2",
            "data.synthetic_val=0",
            "data.synthetic_size=64",
            "data.image_size=64",
            "data.batch_size=1",
            "data.num_workers=0",
            "schedule.epochs=1",
            "progress=false",
            "checkpoint.every_epochs=0",
            "--out",
            str(run),
        ]
    )
    assert code == 0, capsys.readouterr().err
    before, after = load_model(mm_folder), load_model(run / "model.safetensors")
    assert after.config == before.config  # the MM head variant is kept
    assert after.config.contrastive_bias and not after.config.share_class_head
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records and all(torch.isfinite(torch.tensor(r["total"])) for r in records if "total" in r)
    a, b = before.state_dict(), after.state_dict()
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    assert any(k.startswith("class_embed.") for k in moved)  # the per-layer class biases were trained
    assert any(k.startswith("bbox_embed.1.") for k in moved)
