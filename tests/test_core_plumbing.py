"""What every product shares: atomic files, JSON reading, the hub resolver, the strict loader,
one-line error quoting, and :class:`DetectOptions` with the same names in API, CLI and JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from gdino.cli import build_parser
from gdino.cli.options import DETECT_FLAGS, add_detect_options, detect_options
from gdino.core.files import atomic_path, atomic_write_text, read_json, write_json
from gdino.errors import CheckpointError, GdinoError, first_line
from gdino.infer.options import DetectOptions
from gdino.weights import hub
from gdino.weights.strict import load_state_dict_strict


# ---------------------------------------------------------------------------------------- files
def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"x": 1}  # the old file survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]  # no temporary left behind
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "x.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"data")
    assert (tmp_path / "x.png").read_bytes() == b"data"


def test_read_json_errors_are_one_line(tmp_path):
    with pytest.raises(GdinoError, match="labels file not found"):
        read_json(tmp_path / "nope.json", "labels file")
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(GdinoError, match=r"bad.json: not valid JSON \(line 1, column 7") as e:
        read_json(tmp_path / "bad.json")
    assert "\n" not in str(e.value)


def test_first_line():
    assert first_line(OSError("disk full\nmore detail")) == "OSError: disk full"
    assert first_line(ValueError()) == "ValueError: "


# ---------------------------------------------------------------------------------------- hub
class FakeHub:
    """``hf_hub_download`` stand-in: nothing cached; downloads fail with ``error``."""

    def __init__(self, error: Exception | None) -> None:
        self.error, self.calls = error, []

    def __call__(self, repo, filename, cache_dir=None, local_files_only=False):
        self.calls.append(local_files_only)
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        if self.error is not None:
            raise self.error
        return "/cache/" + filename


def test_hub_not_cached_and_offline_says_what_to_run(monkeypatch):
    fake = FakeHub(None)
    monkeypatch.setattr(hub, "hf_hub_download", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as e:
        hub.fetch("org/repo", "w.pt", what="sam weights", hint="or pass a file")
    msg = str(e.value)
    assert "org/repo/w.pt is not in" in msg and "HF_HUB_OFFLINE is set" in msg and "or pass a file" in msg
    assert f"`{hub.download_command('org/repo', 'w.pt')}`" in msg and "\n" not in msg
    assert fake.calls == [True]  # offline: no download attempted


def test_hub_download_failure_names_the_reason(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hf_hub_download", FakeHub(PermissionError("401 Unauthorized: token expired")))
    with pytest.raises(
        CheckpointError, match=r"downloading org/repo/w.pt into .* failed \(PermissionError: 401 Unauthorized"
    ):
        hub.fetch("org/repo", "w.pt", what="sam weights", hint="or pass a file")
    ok = FakeHub(None)
    monkeypatch.setattr(hub, "hf_hub_download", ok)
    assert str(hub.fetch("org/repo", "w.pt", what="x", hint="y")) == "/cache/w.pt"
    assert ok.calls == [True, False]  # the cache first, then the download


def test_download_command_follows_the_installed_hub(monkeypatch):
    monkeypatch.setattr(hub.huggingface_hub, "__version__", "0.33.1")
    assert hub.download_command("a/b", "f") == "huggingface-cli download a/b f"
    monkeypatch.setattr(hub.huggingface_hub, "__version__", "1.2.0")
    assert hub.download_command("a/b") == "hf download a/b"


# ---------------------------------------------------------------------------------------- strict loading
def test_strict_loader_names_every_problem_and_honours_allow_lists():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    good = {k: torch.full_like(v, 7.0) for k, v in module.state_dict().items()}
    bad = dict(good)
    del bad["1.bias"]
    bad["pooler.weight"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(module, bad, source="f.safetensors", what="the encoder")
    msg = str(e.value)
    assert msg.startswith("f.safetensors: weights do not match the encoder: ")
    assert "missing 1 (1.bias)" in msg and "unexpected 1 (pooler.weight)" in msg
    assert "0.weight (2, 2) vs expected (3, 2)" in msg
    partial = {k: v for k, v in good.items() if k != "1.bias"}
    partial["pooler.weight"] = torch.zeros(1)
    before = module.state_dict()["1.bias"].clone()
    load_state_dict_strict(module, partial, allow_missing=["1.bias"], allow_unexpected=["pooler.weight"])
    assert torch.equal(module.state_dict()["0.weight"], good["0.weight"])
    assert torch.equal(module.state_dict()["1.bias"], before)  # allowed missing keeps its value


# ---------------------------------------------------------------------------------------- options
def test_options_validate_with_flag_names():
    for kwargs, match in [
        ({"box_threshold": 1.5}, r"box-threshold must be a number in \[0, 1\]"),
        ({"nms_iou": -0.1}, "nms-iou"),
        ({"max_detections": 0}, "max-detections must be a positive integer"),
        ({"batch_size": True}, "batch-size"),
        ({"image_size": 16}, "image-size must be an integer >= 32"),
        ({"image_size": (320, 8)}, "image-size"),
        ({"dtype": "int8"}, "unknown dtype"),
    ]:
        with pytest.raises(GdinoError, match=match):
            DetectOptions(**kwargs)


def test_options_round_trip_through_json():
    opts = DetectOptions(box_threshold=0.2, nms_iou=0.5, max_detections=7, image_size=(320, 480), dtype=torch.bfloat16)
    assert opts.dtype == "bf16"
    data = json.loads(json.dumps(opts.to_dict()))
    assert data["image_size"] == [320, 480]
    assert DetectOptions.from_dict(data) == opts
    with pytest.raises(GdinoError, match="unknown detection option"):
        DetectOptions.from_dict({**data, "nms": 0.5})


def test_options_resize_rule():
    # official: 800 would make the long side 1600 > 1333, so short = round(1333 * 500 / 1000) = 666
    # (half to even) and long = int(666 * 1000 / 500) = 1332
    assert DetectOptions().preprocess.target_size(1000, 500) == (1332, 666)
    # an int size scales the cap too: max = round(400 * 1333 / 800) = 666; short = round(666 / 4) = 166
    assert DetectOptions(image_size=400).preprocess.target_size(4000, 1000) == (664, 166)
    assert DetectOptions(image_size=400).preprocess.target_size(1000, 1000) == (400, 400)
    assert DetectOptions(image_size=(320, 480)).preprocess.target_size(10, 1000) == (480, 320)


def test_cli_flags_are_the_option_names_and_defaults_come_from_the_dataclass():
    p = argparse.ArgumentParser()
    add_detect_options(p)
    fields = {f.name: f for f in dataclasses.fields(DetectOptions)}
    for name in DETECT_FLAGS:
        assert name in fields
        action = next(a for a in p._actions if a.dest == name)
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.default is None  # unset flags keep DetectOptions' default...
        if "(default " in (action.help or "") and fields[name].default is not None:
            assert f"(default {fields[name].default})" in action.help  # ...which the help states
    args = p.parse_args(["--box-threshold", "0.2", "--nms-iou", "0.6", "--max-detections", "5"])
    assert detect_options(args) == DetectOptions(box_threshold=0.2, nms_iou=0.6, max_detections=5)


@pytest.mark.parametrize("command", ["detect", "segment", "label"])
def test_commands_share_the_detection_flags(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    dests = {a.dest for a in sub._actions}
    assert set(DETECT_FLAGS) <= dests
    help_text = sub.format_help()
    assert "--out" in help_text and ("FILE" in help_text or "DIR" in help_text)
    if command == "label":
        assert "sam2.1-hiera-t" in help_text and "--text-threshold" in help_text


def test_max_detections_keeps_the_best(tiny_model, chelsea_jpg):
    from gdino.infer.detector import Detector

    detector = Detector(tiny_model, image_size=128, box_threshold=0.05)
    every = detector.detect(chelsea_jpg, ["cat", "remote control"])[0]
    assert len(every) > 3
    top = detector.detect(chelsea_jpg, ["cat", "remote control"], max_detections=3)[0]
    assert len(top) == 3
    torch.testing.assert_close(top.scores, every.scores[:3])
    torch.testing.assert_close(top.xyxy, every.xyxy[:3])


def test_no_module_imports_inside_gdino_upward():
    """The import-linter contract in pyproject.toml (also run by .ci/run) holds."""
    lint = os.path.join(os.path.dirname(os.sys.executable), "lint-imports")
    if not os.path.exists(lint):
        pytest.skip("import-linter is not installed (it is in [dev])")
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([lint], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
