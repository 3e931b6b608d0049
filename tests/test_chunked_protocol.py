"""mmdetection's chunked class prompts (``chunked_size``): class lists split into prompts of a fixed
number of classes, ``topk`` (query, class) pairs kept per prompt and concatenated. MM-Grounding-DINO
and LLMDet report LVIS with 40 classes per prompt; ``gdino eval lvis --classes-per-prompt 40``."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from gdino.cli import main
from gdino.errors import GdinoError, PromptError
from gdino.infer.detector import Detector
from gdino.text.chunking import chunk_classes

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["cat", "remote control", "dog", "green traffic light", "frisbee", "sofa", "bird"]


def test_fixed_size_chunks_keep_the_order(tokenizer):
    chunks = chunk_classes(tokenizer, CLASSES, 256, max_classes=3)
    assert [c.class_indices for c in chunks] == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunks[1].caption == "green traffic light . frisbee . sofa ."
    assert [c.class_indices for c in chunk_classes(tokenizer, CLASSES, 256, max_classes=100)] == [list(range(7))]
    # the token budget still applies: 7 classes do not fit in 12 tokens
    assert all(c.num_tokens <= 12 for c in chunk_classes(tokenizer, CLASSES, 12, max_classes=5))
    with pytest.raises(PromptError, match="positive int"):
        chunk_classes(tokenizer, CLASSES, 256, max_classes=0)


def test_topk_per_chunk_equals_separate_prompts(tiny_model, chelsea_jpg):
    """Chunks of 3 with topk 4: the result is, chunk by chunk, what each chunk's classes give as a
    prompt of their own with topk 4 (class ids shifted to the whole list)."""
    chunked = Detector(tiny_model, image_size=96, classes_per_prompt=3)
    got = chunked.detect(str(chelsea_jpg), CLASSES, box_threshold=0.0, topk=4)[0]
    assert len(got.scores) == 12  # 4 per chunk, 3 chunks
    parts = []
    for start in (0, 3, 6):
        names = CLASSES[start : start + 3]
        alone = Detector(tiny_model, image_size=96).detect(str(chelsea_jpg), names, box_threshold=0.0, topk=4)[0]
        parts.append((alone.xyxy, alone.scores, alone.class_ids + start))
    want_boxes, want_scores, want_ids = (torch.cat(t) for t in zip(*parts))
    # the same detections, in a canonical order (Detections sort by score; many random-weight scores tie)
    got_rows, want_rows = (
        sorted(zip(i.tolist(), s.tolist(), b.tolist()))
        for i, s, b in ((got.class_ids, got.scores, got.xyxy), (want_ids, want_scores, want_boxes))
    )
    assert [r[0] for r in got_rows] == [r[0] for r in want_rows]
    assert torch.allclose(torch.tensor([r[1] for r in got_rows]), torch.tensor([r[1] for r in want_rows]), atol=1e-6)
    assert torch.allclose(torch.tensor([r[2] for r in got_rows]), torch.tensor([r[2] for r in want_rows]), atol=1e-4)
    whole = Detector(tiny_model, image_size=96).detect(str(chelsea_jpg), CLASSES, box_threshold=0.0, topk=4)[0]
    assert len(whole.scores) == 4  # the default: one top-k for the whole list
    with pytest.raises(GdinoError, match="positive int"):
        Detector(tiny_model, classes_per_prompt=0)


def test_eval_lvis_cli_with_classes_per_prompt(tiny_checkpoint, chelsea_jpg, tmp_path, capsys):
    images = tmp_path / "val2017"
    images.mkdir()
    Image.open(chelsea_jpg).save(images / "000000000001.jpg")
    cats = [{"id": k + 1, "name": n, "frequency": "rcf"[k % 3]} for k, n in enumerate(CLASSES)]
    gt = {
        "images": [
            {
                "id": 1,
                "width": 451,
                "height": 300,
                "coco_url": "http://x/val2017/000000000001.jpg",
                "neg_category_ids": [3],
                "not_exhaustive_category_ids": [],
            }
        ],
        "categories": cats,
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [120, 20, 200, 260], "area": 52000}],
    }
    (tmp_path / "lvis.json").write_text(json.dumps(gt))
    args = [
        "eval",
        "lvis",
        "--annotations",
        str(tmp_path / "lvis.json"),
        "--images",
        str(tmp_path),
        "--weights",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--image-size",
        "96",
        "--topk",
        "5",
        "--no-progress",
    ]
    assert main([*args, "--classes-per-prompt", "3", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    chunked = json.loads((tmp_path / "a" / "detections.json").read_text())
    whole = json.loads((tmp_path / "b" / "detections.json").read_text())
    assert len(chunked) == 15 and len(whole) == 5  # 5 per prompt of 3, 3, 1 classes vs 5 per image
    assert main([*args, "--classes-per-prompt", "0"]) == 2
    assert "classes-per-prompt must be a positive integer" in capsys.readouterr().err
