"""Boxes mode end to end: ``gdino track`` with the tiny random model on a generated video, the
output formats (tracks.json, mot.txt parsed back, tracks.mp4), the Python API, and ByteTrack's
association checked on ground-truth boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="PyAV (in [video])")
pytest.importorskip("trackers", reason="trackers (in [video])")

from gdino.cli import main  # noqa: E402
from gdino.core.detections import Detections  # noqa: E402
from gdino.track.boxes import BoxTracker, ByteTrackSettings  # noqa: E402
from gdino.track.stream import track  # noqa: E402
from gdino.track.synthetic import VideoSpec, generate_frames, generate_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = VideoSpec(frames=20, width=96, height=80, objects=3, min_side=22, max_side=28, seed=2)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("boxes_video")
    generate_video(SPEC, out)
    return out / "video.mp4"


def _args(video, ckpt, out, *extra):
    return [
        "track",
        str(video),
        "--classes",
        "red circle,blue square",
        "--weights",
        str(ckpt),
        "--device",
        "cpu",
        "--image-size",
        "96",
        "--box-threshold",
        "0.3",
        "--max-detections",
        "8",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def parse_mot(path: Path) -> list[tuple[int, int, float, float, float, float, float]]:
    rows = []
    for line in path.read_text().splitlines():
        f = line.split(",")
        assert len(f) == 10 and f[7:] == ["-1", "-1", "-1"], line
        rows.append((int(f[0]), int(f[1]), *(float(v) for v in f[2:7])))
    return rows


def test_cli_boxes_outputs(video, tiny_checkpoint, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(video, tiny_checkpoint, out, "--draw", "--stride", "2", "--start", "1")) == 0
    assert "tracked" in capsys.readouterr().err
    doc = json.loads((out / "tracks.json").read_text())
    assert doc["tracking_mode"] == "boxes" and doc["classes"] == ["red circle", "blue square"]
    assert (doc["width"], doc["height"], doc["fps"]) == (96, 80, 15.0)
    assert [f["frame"] for f in doc["frames"]] == list(range(1, 20, 2))
    objects = [(f["frame"], o) for f in doc["frames"] for o in f["objects"]]
    assert objects, "the random model finds something at this threshold"
    for _, o in objects:
        assert o["label"] in ("red circle", "blue square") and o["id"] >= 1 and 0.3 < o["score"] <= 1
        x0, y0, x1, y1 = o["box"]
        assert 0 <= x0 <= x1 <= 96 and 0 <= y0 <= y1 <= 80
    ids = [o["id"] for f in doc["frames"] for o in f["objects"]]
    assert sorted({t["id"] for t in doc["tracks"]}) == sorted(set(ids))
    # mot.txt parsed back: the same objects, frames counted from 1, boxes as x,y,w,h
    mot = parse_mot(out / "mot.txt")
    assert len(mot) == len(objects)
    for (frame, tid, x, y, w, h, conf), (index, o) in zip(mot, objects):
        assert (frame, tid) == (index + 1, o["id"])
        np.testing.assert_allclose([x, y, x + w, y + h, conf], [*o["box"], o["score"]], atol=0.011)
    # the drawn video: one frame per processed frame, the source's size
    with av.open(str(out / "tracks.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 10 and frames[0].shape == (80, 96, 3)

    # the Python API gives the same tracks (same options, same frames)
    from gdino import Detector

    det = Detector(tiny_model, image_size=96, box_threshold=0.3, max_detections=8)
    api = list(track(det, video, ["red circle", "blue square"], start=1, stride=2))
    assert [ft.frame for ft in api] == [f["frame"] for f in doc["frames"]]
    assert [[o.to_dict() for o in ft.objects] for ft in api] == [f["objects"] for f in doc["frames"]]


def test_prompt_that_never_matches_gives_empty_tracks(video, tiny_checkpoint, tmp_path):
    out = tmp_path / "none"
    assert main(_args(video, tiny_checkpoint, out, "--box-threshold", "1.0", "--end", "6")) == 0
    doc = json.loads((out / "tracks.json").read_text())
    assert [f["objects"] for f in doc["frames"]] == [[]] * 6 and doc["tracks"] == []
    assert (out / "mot.txt").read_text() == ""


def test_cli_bad_input_is_one_line(video, tiny_checkpoint, tmp_path, capsys):
    for extra, message in (([], "no frames to track from frame 50"),):
        assert main(_args(video, tiny_checkpoint, tmp_path / "o", "--start", "50", *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(_args(tmp_path / "missing.mp4", tiny_checkpoint, tmp_path / "o2")) == 2
    assert "gdino track: error: video not found" in capsys.readouterr().err
    assert main(_args(video, tiny_checkpoint, tmp_path / "o3", "--segmenter", "sam2.1-hiera-t")) == 2
    assert "only apply with --mode masks" in capsys.readouterr().err
    assert main(_args(video, tiny_checkpoint, tmp_path / "o4", "--mode", "masks", "--segmenter", "sam-vit-b")) == 2
    assert "needs a SAM 2 segmenter" in capsys.readouterr().err
    assert main(_args(video, tiny_checkpoint, tmp_path / "o5", "--stride", "0")) == 2
    assert "bad frame range" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_masks_mode_with_released_size_sam2(video, tiny_checkpoint, tmp_path):
    """``--mode masks`` end to end with a full-size (random) sam2.1-hiera-t given as --segmenter-weights."""
    pytest.importorskip("sam2", reason="sam2 (in [sam2])")
    from gdino.segment.sam2_backend import SAM2_CONFIGS, build_sam2_model

    torch.manual_seed(0)
    weights = tmp_path / "sam2.pt"
    torch.save({"model": build_sam2_model(SAM2_CONFIGS["sam2.1-hiera-t"]).state_dict()}, weights)
    out = tmp_path / "masks"
    args = _args(
        video,
        tiny_checkpoint,
        out,
        "--mode",
        "masks",
        "--segmenter",
        "sam2.1-hiera-t",
        "--segmenter-weights",
        str(weights),
        "--detect-every",
        "2",
        "--end",
        "4",
        "--max-detections",
        "2",
        "--draw",
    )
    assert main(args) == 0
    doc = json.loads((out / "tracks.json").read_text())
    assert doc["tracking_mode"] == "masks" and [f["frame"] for f in doc["frames"]] == [0, 1, 2, 3]
    for f in doc["frames"]:
        for o in f["objects"]:
            assert o["mask"]["size"] == [80, 96]
    assert (out / "tracks.mp4").stat().st_size > 0


def test_truncated_video_tracks_what_is_readable(tiny_checkpoint, tmp_path, capsys):
    from gdino.track.writers import write_mp4

    mkv = write_mp4(tmp_path / "v.mkv", [im for im, _ in generate_frames(SPEC)], SPEC.fps, container="matroska")
    data = mkv.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    assert main(_args(cut, tiny_checkpoint, tmp_path / "o")) == 0
    err = capsys.readouterr().err
    doc = json.loads((tmp_path / "o" / "tracks.json").read_text())
    n = len(doc["frames"])
    assert 2 <= n < 20 and [f["frame"] for f in doc["frames"]] == list(range(n))
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [
        f"gdino track: warning: the video ended after {n} of 20 frames (truncated?); tracked up to there"
    ]
    assert doc["warning"].startswith("the video ended")


def test_bytetrack_keeps_identities_on_ground_truth_boxes():
    """Ground-truth boxes as detections: every object keeps one id through crossings (no id is shared
    by two objects), checked against the generator's ids. The ``trackers`` ByteTrack confirms a new
    track at its second detection, so an object's first frame (and a re-found one's) has no id."""
    spec = VideoSpec(frames=60, width=160, height=128, objects=4, seed=0)
    tracker = BoxTracker(ByteTrackSettings(), fps=spec.fps)
    seen: dict[int, set[int]] = {}
    owners: dict[int, set[int]] = {}
    missed, total = 0, 0
    for _, truth in generate_frames(spec):
        boxes = torch.tensor([g.box for g in truth], dtype=torch.float32).reshape(-1, 4)
        dets = Detections(
            boxes,
            torch.full((len(truth),), 0.9),
            torch.zeros(len(truth), dtype=torch.long),
            [g.label for g in truth],
            (spec.width, spec.height),
        )
        objects = tracker.update(dets)
        missed += len(truth) - len(objects)
        total += len(truth)
        for o in objects:
            gt = next(g for g in truth if tuple(float(v) for v in g.box) == o.xyxy)
            assert o.label == gt.label
            seen.setdefault(gt.track_id, set()).add(o.track_id)
            owners.setdefault(o.track_id, set()).add(gt.track_id)
    assert all(len(v) == 1 for v in owners.values())  # no id shared by two objects
    switches = sum(len(v) - 1 for v in seen.values())
    assert switches <= 1  # at most one object re-identified after a full occlusion
    assert len(seen) == 4 and total > 150 and missed <= 2 * len(seen)
