"""Resumable tracking: a ``gdino track`` process killed with SIGKILL and run again writes the same
outputs as an uninterrupted run (boxes mode: ByteTrack rebuilt by replaying the journal); masks
mode restores the tracker state after an interruption; a resume with other settings is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_SAM2, randomize_

pytest.importorskip("av", reason="PyAV (in [video])")
pytest.importorskip("trackers", reason="trackers (in [video])")

from gdino.cli import main  # noqa: E402
from gdino.track.synthetic import VideoSpec, generate_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = VideoSpec(frames=24, width=96, height=80, objects=3, min_side=22, max_side=28, seed=4)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume_video")
    generate_video(SPEC, out)
    return out / "video.mp4"


def _args(video, ckpt, out, *extra):
    return [
        "track",
        str(video),
        "--classes",
        "red circle,blue square,green star",
        "--weights",
        str(ckpt),
        "--device",
        "cpu",
        "--image-size",
        "96",
        "--box-threshold",
        "0.3",
        "--max-detections",
        "6",
        "--chunk",
        "2",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _outputs(out: Path) -> tuple[list, list, str]:
    doc = json.loads((out / "tracks.json").read_text())
    return doc["frames"], doc["tracks"], (out / "mot.txt").read_text()


def test_sigkill_then_resume_equals_uninterrupted(video, tiny_checkpoint, tmp_path, capsys):
    whole = tmp_path / "whole"
    assert main(_args(video, tiny_checkpoint, whole)) == 0
    expected = _outputs(whole)
    assert sum(len(f["objects"]) for f in expected[0]) > 0

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gdino", *_args(video, tiny_checkpoint, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    journal = out / ".gdino-track" / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = journal.read_bytes().count(b"\n")
    assert 3 <= done < 12 and not (out / "tracks.json").exists()
    with open(journal, "ab") as f:  # as if killed in the middle of a write
        f.write(b'{"file": "frames 98-99", "frames": [{"fra')

    assert main(_args(video, tiny_checkpoint, out)) == 0
    assert f"({2 * done} from an earlier run)" in capsys.readouterr().err
    assert _outputs(out) == expected


def test_resume_with_other_settings_is_refused(video, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_args(video, tiny_checkpoint, out, "--end", "4")) == 0
    assert main(_args(video, tiny_checkpoint, out, "--end", "4", "--box-threshold", "0.5")) == 2
    err = capsys.readouterr().err
    assert "holds a tracking job with other settings (options differs)" in err and err.count("error") == 1
    assert main(_args(video, tiny_checkpoint, out, "--end", "4", "--box-threshold", "0.5", "--overwrite")) == 0


def test_masks_mode_resume_restores_the_tracker(video, tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("sam2", reason="sam2 (in [sam2])")
    from sam2.build_sam import build_sam2_video_predictor

    from gdino import Detector
    from gdino.label.folder import Journal
    from gdino.track.job import track_video
    from gdino.track.masks import MaskSettings
    from gdino.track.stream import TrackSettings

    torch.manual_seed(0)
    sam2 = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=SMALL_SAM2,
    )
    randomize_(sam2, seed=5)
    with torch.no_grad():  # random object-score heads often say "no object": make it "present"
        sam2.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    det = Detector(tiny_model, image_size=96, box_threshold=0.3, max_detections=3)
    settings = TrackSettings("masks", end=9, masks=MaskSettings(detect_every=3))
    classes = ["red circle", "blue square"]
    track_video(det, video, tmp_path / "whole", classes, settings=settings, sam2=sam2, progress=False)
    expected = _outputs(tmp_path / "whole")
    assert any(f["objects"] for f in expected[0]) and "mask" in expected[0][0]["objects"][0]

    real_add = Journal.add
    calls = []

    def add_then_die(self, record):
        real_add(self, record)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        track_video(det, video, tmp_path / "cut", classes, settings=settings, sam2=sam2, progress=False)
    monkeypatch.setattr(Journal, "add", real_add)
    summary = track_video(det, video, tmp_path / "cut", classes, settings=settings, sam2=sam2, progress=False)
    assert (summary.resumed, summary.tracked) == (6, 3)
    assert _outputs(tmp_path / "cut") == expected


def test_live_stream_finishes_on_ctrl_c_and_is_not_resumed(video, tiny_model, tmp_path, monkeypatch):
    """A stream URL (here file://, opened by PyAV as a stream): Ctrl-C writes the outputs of the chunks done."""
    from gdino import Detector
    from gdino.errors import GdinoError
    from gdino.track.boxes import BoxTracker
    from gdino.track.job import track_video
    from gdino.track.stream import TrackSettings

    real_update = BoxTracker.update

    def update_then_ctrl_c(self, dets):
        if self.frames == 7:
            raise KeyboardInterrupt
        return real_update(self, dets)

    monkeypatch.setattr(BoxTracker, "update", update_then_ctrl_c)
    det = Detector(tiny_model, image_size=96, box_threshold=0.3, max_detections=4)
    url = video.resolve().as_uri()
    summary = track_video(det, url, tmp_path / "live", ["red circle"], settings=TrackSettings(chunk=3), progress=False)
    assert summary.warning == "stopped by Ctrl-C after 6 frames" and summary.frames == 6
    doc = json.loads((tmp_path / "live" / "tracks.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == list(range(6)) and doc["video"] == url
    with pytest.raises(GdinoError, match="live stream, which cannot be resumed"):
        track_video(det, url, tmp_path / "live", ["red circle"], settings=TrackSettings(chunk=3), progress=False)
