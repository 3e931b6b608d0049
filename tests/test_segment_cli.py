"""``gdino segment`` as a user runs it: tiny detector checkpoint + a small random SAM saved here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

pytest.importorskip("segment_anything", reason="segment-anything (in [dev] / [sam])")

from gdino.cli import main  # noqa: E402
from gdino.core.rle import decode_mask  # noqa: E402
from gdino.segment.sam_model import SAM_PRESETS, build_sam  # noqa: E402

FAST = ["--device", "cpu", "--image-size", "128", "--box-threshold", "0.05"]


@pytest.fixture(scope="module")
def sam_weights(tmp_path_factory):
    torch.manual_seed(0)
    sam = randomize_(build_sam(SAM_PRESETS["sam-tiny"]), seed=4)
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def test_segment_end_to_end_subprocess(tiny_checkpoint, sam_weights, chelsea_jpg, tmp_path):
    out, draw = tmp_path / "out.json", tmp_path / "drawn"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gdino",
            "segment",
            str(chelsea_jpg),
            "--classes",
            "cat,remote control",
            "--weights",
            str(tiny_checkpoint),
            "--segmenter",
            "sam-tiny",
            "--segmenter-weights",
            str(sam_weights),
            "--out",
            str(out),
            "--draw",
            str(draw),
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["segmenter"] == "sam-tiny" and doc["classes"] == ["cat", "remote control"]
    (result,) = doc["results"]
    assert (result["width"], result["height"]) == (451, 300) and result["detections"]
    for d in result["detections"]:
        mask = decode_mask(d["mask"])
        assert mask.shape == (300, 451)
        assert 0.0 <= d["score"] <= 1.0 and isinstance(d["mask_score"], float)
        assert d["label"] in ("cat", "remote control")
    drawn = Image.open(draw / "chelsea.jpg")
    assert drawn.size == (451, 300)
    assert np.abs(np.asarray(drawn, float) - np.asarray(Image.open(chelsea_jpg), float)).mean() > 1.0


def test_segment_prompt_mode_to_stdout(tiny_checkpoint, sam_weights, chelsea_jpg, capsys):
    code = main(
        [
            "segment",
            str(chelsea_jpg),
            "-p",
            "a cat .",
            "--weights",
            str(tiny_checkpoint),
            "--segmenter",
            "sam-tiny",
            "--segmenter-weights",
            str(sam_weights),
            "--multimask",
            *FAST,
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mode"] == "phrases" and doc["prompt"] == "a cat ."
    assert all("mask" in d for d in doc["results"][0]["detections"])


def test_no_boxes_is_not_an_error(tiny_checkpoint, sam_weights, chelsea_jpg, capsys):
    code = main(
        [
            "segment",
            str(chelsea_jpg),
            "--classes",
            "cat",
            "--weights",
            str(tiny_checkpoint),
            "--segmenter",
            "sam-tiny",
            "--segmenter-weights",
            str(sam_weights),
            *FAST[:-1],
            "1.0",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["detections"] == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--segmenter", "sam-vit-bb"], "unknown segmenter 'sam-vit-bb'"),
        (["--segmenter", "sam-vit-b", "--segmenter-weights", "SAM"], "weights do not match sam-vit-b"),
        (["--segmenter", "sam-tiny", "--segmenter-weights", "/no/such/file.pth"], "segmenter weights not found"),
        (["--segmenter", "sam-tiny", "--segmenter-weights", "SAM", "--segmenter-dtype", "int4"], "unknown dtype"),
    ],
)
def test_bad_input_one_line_exit_2(tiny_checkpoint, sam_weights, chelsea_jpg, capsys, extra, message):
    extra = [str(sam_weights) if a == "SAM" else a for a in extra]
    code = main(["segment", str(chelsea_jpg), "--classes", "cat", "--weights", str(tiny_checkpoint), *extra, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err


def test_label_masks_end_to_end_and_resume(tiny_checkpoint, sam_weights, chelsea_jpg, tmp_path, capsys):
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(chelsea_jpg, folder / "a.jpg")
    Image.open(chelsea_jpg).transpose(Image.Transpose.ROTATE_90).save(folder / "b.png")
    out = tmp_path / "dataset"
    argv = [
        "label",
        str(folder),
        "--classes",
        "cat,remote control",
        "--out",
        str(out),
        "--weights",
        str(tiny_checkpoint),
        "--masks",
        "--segmenter",
        "sam-tiny",
        "--segmenter-weights",
        str(sam_weights),
        "--no-progress",
        *FAST,
    ]
    assert main(argv) == 0
    coco = json.loads((out / "annotations.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    assert sorted(sizes.values()) == [(300, 451), (451, 300)]
    assert coco["annotations"]
    for ann in coco["annotations"]:
        mask = decode_mask(ann["segmentation"])
        assert mask.shape == sizes[ann["image_id"]] and ann["area"] == int(mask.sum())
        assert "mask_score" in ann and 0.0 <= ann["score"] <= 1.0
    capsys.readouterr()
    assert main(argv) == 0  # run again: everything comes from the journal, nothing is redone
    assert "2 from an earlier run" in capsys.readouterr().err
    again = json.loads((out / "annotations.json").read_text())
    assert again["annotations"] == coco["annotations"]
