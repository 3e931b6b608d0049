"""``gdino detect`` / ``gdino label`` as a user runs them: subprocesses on a tiny checkpoint.

Bad input must give exactly one line on stderr and a non-zero exit; the whole matrix runs
in-process through ``gdino.cli.main`` (same code path, no interpreter start-up per case), and a
few cases also run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from gdino.cli import main

FAST = ["--device", "cpu", "--image-size", "96"]


def gdino(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "gdino", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG file that claims ``width x height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def odd_photo(chelsea_jpg, tmp_path_factory) -> Path:
    """The cat photo under a name with spaces and non-ASCII characters."""
    folder = tmp_path_factory.mktemp("odd") / "mes photos"
    folder.mkdir()
    target = folder / "chat noir é 猫.jpg"
    shutil.copy(chelsea_jpg, target)
    return target


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, chelsea_jpg) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    data = chelsea_jpg.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (d / "empty.jpg").write_bytes(b"")
    png_header_only(d / "bomb.png", 40000, 40000)
    (d / "no_images").mkdir()
    (d / "no_images" / "readme.txt").write_text("nothing here")
    return {p.name: p for p in d.iterdir()}


def test_detect_prints_json(tiny_checkpoint, chelsea_jpg):
    res = gdino(
        "detect", str(chelsea_jpg), "--weights", str(tiny_checkpoint), "-p", "cat .", "--box-threshold", "0.3", *FAST
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["mode"] == "phrases" and doc["prompt"] == "cat ." and doc["classes"] == ["cat"]
    (r,) = doc["results"]
    assert r["image"] == str(chelsea_jpg) and (r["width"], r["height"]) == (451, 300)
    assert r["detections"], "the random tiny model scores near 1 everywhere: something must come out"
    for d in r["detections"]:
        assert d["score"] > 0.3 and set(d) >= {"label", "score", "box"}
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 451 and 0 <= y0 <= y1 <= 300
    assert [d["score"] for d in r["detections"]] == sorted((d["score"] for d in r["detections"]), reverse=True)


def test_detect_classes_out_file_draw_odd_names(tiny_checkpoint, chelsea_jpg, odd_photo, tmp_path):
    out, draw = tmp_path / "res ü.json", tmp_path / "drawn"
    res = gdino(
        "detect",
        str(odd_photo),
        str(chelsea_jpg),
        "--weights",
        str(tiny_checkpoint),
        "--classes",
        "cat,remote control",
        "--out",
        str(out),
        "--draw",
        str(draw),
        "--batch-size",
        "2",
        "--dtype",
        "bf16",
        *FAST,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["mode"] == "classes" and doc["classes"] == ["cat", "remote control"]
    assert [r["image"] for r in doc["results"]] == [str(odd_photo), str(chelsea_jpg)]
    for r in doc["results"]:
        assert all(d["label"] in ("cat", "remote control") and d["class_id"] in (0, 1) for d in r["detections"])
    drawn = sorted(p.name for p in draw.iterdir())
    assert drawn == ["chat noir é 猫.jpg", "chelsea.jpg"]
    with Image.open(draw / "chelsea.jpg") as im, Image.open(chelsea_jpg) as orig:
        assert im.size == orig.size
        assert im.convert("RGB").tobytes() != orig.convert("RGB").tobytes()  # boxes were drawn


def test_unreadable_image_among_good_ones_is_reported_not_fatal(tiny_checkpoint, chelsea_jpg, bad_files):
    res = gdino(
        "detect", str(bad_files["empty.jpg"]), str(chelsea_jpg), "--weights", str(tiny_checkpoint), "-p", "cat", *FAST
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert len(doc["results"]) == 1 and doc["errors"][0]["image"] == str(bad_files["empty.jpg"])
    assert "0 bytes" in res.stderr


@pytest.mark.parametrize(
    "case",
    ["missing", "bomb", "unknown device"],
)
def test_bad_input_subprocess(case, tiny_checkpoint, chelsea_jpg, bad_files, tmp_path):
    args = {
        "missing": ["detect", str(tmp_path / "nope.jpg"), "-p", "cat"],
        "bomb": ["detect", str(bad_files["bomb.png"]), "-p", "cat"],
        "unknown device": ["detect", str(chelsea_jpg), "-p", "cat", "--device", "tpu"],
    }[case]
    res = gdino(*args, "--weights", str(tiny_checkpoint))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdino detect: error:"), res.stderr


BAD = {
    "missing file": (["detect", "{tmp}/nope.jpg", "-p", "cat"], "file not found"),
    "folder without images": (["label", "{bad}/no_images", "--classes", "cat", "--out", "{tmp}/ds"], "no images found"),
    "missing folder": (["label", "{tmp}/nowhere", "--classes", "cat", "--out", "{tmp}/ds"], "folder not found"),
    "corrupt": (["detect", "{bad}/corrupt.jpg", "-p", "cat"], "corrupt"),
    "truncated": (["detect", "{bad}/truncated.jpg", "-p", "cat"], "truncated"),
    "0-byte": (["detect", "{bad}/empty.jpg", "-p", "cat"], "empty file (0 bytes)"),
    "decompression bomb": (["detect", "{bad}/bomb.png", "-p", "cat"], "decompression bomb"),
    "empty prompt": (["detect", "{cat}", "-p", ""], "names nothing"),
    "punctuation prompt": (["detect", "{cat}", "-p", " . ,;!"], "names nothing"),
    "empty classes": (["detect", "{cat}", "--classes", " , "], "names no class"),
    "class with a dot": (["detect", "{cat}", "--classes", "st. bernard,dog"], "separates phrases"),
    "unknown device": (["detect", "{cat}", "-p", "cat", "--device", "tpu"], "unknown device"),
    "unavailable device": (["detect", "{cat}", "-p", "cat", "--device", "mps"], "not available"),
    "unknown dtype": (["detect", "{cat}", "-p", "cat", "--dtype", "int4"], "unknown dtype"),
    "box threshold > 1": (["detect", "{cat}", "-p", "cat", "--box-threshold", "1.5"], "box-threshold must be"),
    "text threshold < 0": (["detect", "{cat}", "-p", "cat", "--text-threshold", "-0.1"], "text-threshold must be"),
    "label threshold": (
        ["label", "{bad}", "--classes", "cat", "--out", "{tmp}/ds", "--box-threshold", "2"],
        "box-threshold",
    ),
    "nan threshold": (["detect", "{cat}", "-p", "cat", "--box-threshold", "nan"], "box-threshold must be"),
    "batch size": (["detect", "{cat}", "-p", "cat", "--batch-size", "0"], "batch-size"),
    "missing weights": (["detect", "{cat}", "-p", "cat", "--weights", "{tmp}/none.safetensors"], "none.safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_nonzero_exit(case, capsys, chelsea_jpg, bad_files, tiny_checkpoint, tmp_path):
    template, expected = BAD[case]
    values = {"tmp": str(tmp_path), "bad": str(next(iter(bad_files.values())).parent), "cat": str(chelsea_jpg)}
    args = [a.format(**values) for a in template]
    if "--weights" not in args:
        args += ["--weights", str(tiny_checkpoint)]
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "mps", "auto"])
def test_device_names(value, monkeypatch):
    import torch

    from gdino.core.runtime import resolve_device
    from gdino.errors import GdinoError

    if value == "auto":
        assert resolve_device("auto").type in ("cpu", "cuda", "mps")
        return
    if value.startswith("cuda"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(GdinoError, match="CUDA is not available"):
            resolve_device(value)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        assert resolve_device(value) == torch.device(value)
        with pytest.raises(GdinoError, match="does not exist"):
            resolve_device("cuda:3")
    else:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        assert resolve_device("mps") == torch.device("mps")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        with pytest.raises(GdinoError, match="MPS is not available"):
            resolve_device("mps")
