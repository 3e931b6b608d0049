"""``gdino eval`` end to end: scoring files, and the tiny checkpoint on a 2-image dataset."""

from __future__ import annotations

import json

import pytest
from test_eval_coco import random_dataset
from test_eval_model import SIZE, write_dataset

from gdino import cli
from gdino.eval.coco import score_coco


@pytest.fixture
def gdino_main():
    """``gdino.cli.main``."""
    return cli.main


def test_score_command(gdino_main, tmp_path, capsys):
    gt, dets = random_dataset(7)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    code = gdino_main(
        [
            "eval",
            "score",
            "--annotations",
            str(tmp_path / "gt.json"),
            "--detections",
            str(tmp_path / "dt.json"),
            "--out",
            str(tmp_path / "out"),
            "--per-class",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    ap = score_coco(gt, dets)["AP"]
    lines = out.splitlines()
    assert lines[1].split()[0] == "AP" and lines[3].split()[0] == f"{100 * ap:.1f}"
    assert "class_0" in out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["AP"] == pytest.approx(ap, abs=1e-12)
    assert (tmp_path / "out" / "pr_curves.png").is_file()


def test_score_command_errors(gdino_main, tmp_path, capsys):
    gt, dets = random_dataset(8)
    dets[3]["category_id"] = 999
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    code = gdino_main(
        ["eval", "score", "--annotations", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "dt.json")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.endswith("dt.json: entry 3: category_id 999 is not in the ground truth's categories") and "\n" not in err
    code = gdino_main(["eval", "coco", "--annotations", str(tmp_path / "none.json"), "--images", str(tmp_path)])
    assert code == 2 and "none.json: annotation file not found" in capsys.readouterr().err


def test_lvis_score_command(gdino_main, tmp_path, capsys):
    from test_eval_lvis import toy_lvis

    from gdino.eval.lvis import score_lvis

    gt, dets = toy_lvis(3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    code = gdino_main(
        [
            "eval",
            "score",
            "--lvis",
            "--annotations",
            str(tmp_path / "gt.json"),
            "--detections",
            str(tmp_path / "dt.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "APr" in out
    assert f"{100 * score_lvis(gt, dets)['AP']:.1f}" in out.splitlines()[3]


def test_eval_coco_with_tiny_checkpoint(gdino_main, tiny_checkpoint, tmp_path, capsys):
    ann = write_dataset(tmp_path)
    code = gdino_main(
        [
            "eval",
            "coco",
            "--annotations",
            str(ann),
            "--images",
            str(tmp_path / "img"),
            "--weights",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--image-size",
            str(SIZE),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--per-class",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    dets = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert metrics["num_images"] == 2 and len(dets) == metrics["num_detections"] == 2 * 50 * 2
    assert metrics["AP"] == pytest.approx(score_coco(ann, dets)["AP"], abs=1e-12)
    assert "COCO box AP" in out and "remote control" in out
