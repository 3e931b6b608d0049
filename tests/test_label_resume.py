"""``gdino label`` killed with SIGKILL midway (twice), then run again: every image exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

N_IMAGES = 24


def label_cmd(folder: Path, out: Path, ckpt: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gdino",
        "label",
        str(folder),
        "--classes",
        "cat,remote control",
        "--out",
        str(out),
        "--weights",
        str(ckpt),
        "--device",
        "cpu",
        "--image-size",
        "64",
        "--format",
        "yolo",
        "--workers",
        "2",
    ]


def journal_lines(out: Path) -> int:
    path = out / ".gdino-label" / "journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def run_and_kill(cmd: list[str], out: Path, after: int, env: dict[str, str], timeout: float = 240) -> int:
    """Start ``cmd``, SIGKILL it once the journal holds ``after`` lines; returns lines at the kill."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    try:
        while journal_lines(out) < after:
            assert proc.poll() is None, f"gdino label ended (rc={proc.returncode}) before it could be killed"
            assert time.monotonic() < deadline, "gdino label made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return journal_lines(out)


@pytest.fixture
def folder(tmp_path, chelsea_jpg) -> Path:
    root = tmp_path / "photos ü"
    (root / "nested").mkdir(parents=True)
    cat = Image.open(chelsea_jpg).convert("RGB").resize((72, 48))
    for i in range(N_IMAGES):
        where = root / "nested" if i % 3 == 0 else root
        cat.rotate(15 * i).save(where / f"img {i:02d}.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def test_sigkill_midway_then_resume(folder, tmp_path, tiny_checkpoint):
    out = tmp_path / "dataset"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = label_cmd(folder, out, tiny_checkpoint)

    first = run_and_kill(cmd, out, after=3, env=env)
    assert 3 <= first < N_IMAGES + 1
    assert not (out / "annotations.json").exists()  # the dataset is written only from a finished journal
    second = run_and_kill(cmd, out, after=first + 3, env=env)
    assert first < second < N_IMAGES + 1

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = done.stderr.strip().splitlines()[-1]
    assert f"labeled {N_IMAGES} of {N_IMAGES + 1} images ({second} from an earlier run)" in summary, summary
    assert "skipped 1 unreadable" in summary
    assert "img/s" in done.stderr  # the progress bar (rate and ETA)

    expected = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("img *.jpg"))
    coco = json.loads((out / "annotations.json").read_text(encoding="utf-8"))
    names = [i["file_name"] for i in coco["images"]]
    assert sorted(names) == expected and len(set(names)) == len(names) == N_IMAGES  # each exactly once
    assert len({i["id"] for i in coco["images"]}) == N_IMAGES
    assert {a["image_id"] for a in coco["annotations"]} <= {i["id"] for i in coco["images"]}
    records = [
        json.loads(line) for line in (out / ".gdino-label" / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(records) == len({r["file"] for r in records}) == N_IMAGES + 1
    assert json.loads((out / "skipped.json").read_text())[0]["file"] == "broken.jpg"
    yolo = sorted(p.relative_to(out / "labels" / "train").as_posix() for p in (out / "labels" / "train").rglob("*.txt"))
    assert yolo == sorted(n[:-4] + ".txt" for n in expected)
