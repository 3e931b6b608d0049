"""``gdino detect --runtime onnxruntime|openvino --onnx FILE`` end to end, in-process through
``gdino.cli.main``: the JSON written with the exported graph equals the one written with the
PyTorch checkpoint of the same weights (the session export of ``tiny_model``: slow), and a file
that is not ONNX gives one error line and exit code 2 (fast). The same for ``gdino label
--runtime`` (the COCO dataset of ``gdino label --weights``; ``--engine ray`` is refused).

Tolerances: scores within 1e-4 and boxes within 0.1 px (the photo is 451x300; the graph's fp32
outputs match PyTorch to ~1e-6, tests/test_export_onnx.py), same labels, same number of detections.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gdino.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a cat . a remote control . the green sofa ."
COMMON = ["--box-threshold", "0.0", "--text-threshold", "0.0", "--image-size", "256", "--max-detections", "20"]


def _detect(photo, out, *model_flags):
    assert main(["detect", str(photo), "-p", PROMPT, *COMMON, *model_flags, "--out", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    return result["detections"]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_detect_cli_runtime_equals_pytorch(runtime, onnx_file, tiny_checkpoint, chelsea_jpg, tmp_path):
    pytest.importorskip(runtime, reason=f"optional dependency {runtime} (in [export]/[openvino] and [dev])")
    want = _detect(chelsea_jpg, tmp_path / "torch.json", "--weights", str(tiny_checkpoint), "--device", "cpu")
    got = _detect(chelsea_jpg, tmp_path / "runtime.json", "--runtime", runtime, "--onnx", str(onnx_file))
    assert len(got) == len(want) == 20
    assert [d["label"] for d in got] == [d["label"] for d in want]
    np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], atol=1e-4)
    np.testing.assert_allclose([d["box"] for d in got], [d["box"] for d in want], atol=0.1)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_detect_cli_runtime_rejects_a_file_that_is_not_onnx(runtime, chelsea_jpg, tmp_path, capsys):
    pytest.importorskip("onnx", reason="optional dependency onnx (in [export] and [dev])")
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"PK\x03\x04 a zip file, not an ONNX graph" * 8)
    argv = ["detect", str(chelsea_jpg), "-p", PROMPT, "--runtime", runtime, "--onnx", str(junk)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gdino detect: error: ") and "not a readable ONNX file" in err[0]


def _label(folder, out, *model_flags):
    flags = ["--box-threshold", "0.0", "--max-detections", "20", "--image-size", "160", "--no-progress"]
    argv = ["label", str(folder), "--classes", "cat,sofa,person", *flags, *model_flags]
    assert main([*argv, "--out", str(out)]) == 0
    return json.loads((out / "annotations.json").read_text())


@pytest.mark.slow
def test_label_cli_runtime_equals_pytorch(onnx_file, tiny_checkpoint, chelsea_jpg, tmp_path):
    """``gdino label --runtime onnxruntime`` writes the dataset of ``gdino label --weights``
    (COCO boxes are rounded to 2 decimals, scores to 4 or more: tolerances 0.1 px + 0.01, 1e-4 + 1e-4)."""
    pytest.importorskip("onnxruntime", reason="optional dependency onnxruntime (in [export] and [dev])")
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    cat = Image.open(chelsea_jpg).convert("RGB")
    cat.save(folder / "a.jpg")
    cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((300, 200)).save(folder / "b.png")
    want = _label(folder, tmp_path / "torch", "--weights", str(tiny_checkpoint), "--device", "cpu")
    got = _label(folder, tmp_path / "runtime", "--runtime", "onnxruntime", "--onnx", str(onnx_file))
    assert got["info"]["settings"]["weights"] == str(onnx_file)
    assert got["images"] == want["images"] and got["categories"] == want["categories"]
    a, b = got["annotations"], want["annotations"]
    assert len(a) == len(b) > 0
    assert [(x["image_id"], x["category_id"]) for x in a] == [(y["image_id"], y["category_id"]) for y in b]
    np.testing.assert_allclose([x["score"] for x in a], [y["score"] for y in b], atol=2e-4)
    np.testing.assert_allclose([x["bbox"] for x in a], [y["bbox"] for y in b], atol=0.11)


def test_runtime_refuses_engine_ray(tmp_path, capsys):
    argv = ["label", str(tmp_path), "--classes", "cat", "--out", str(tmp_path / "out"), "--engine", "ray"]
    assert main([*argv, "--runtime", "onnxruntime", "--onnx", "m.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gdino label: error:") and "--engine local" in err and "\n" not in err


def test_onnxruntime_providers_for_each_device(tmp_path):
    """cpu: the CPU provider; cuda: TensorRT (engine cached beside the graph, fp16 only when asked)
    then CUDA then CPU, each only where this onnxruntime has it; neither GPU provider: one error."""
    from gdino.export.runtimes import RuntimeGraphError, onnxruntime_providers

    graph = tmp_path / "model.onnx"
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers("cpu", every, graph) == ["CPUExecutionProvider"]
    trt, cuda, cpu = onnxruntime_providers("cuda", every, graph, fp16=True)
    assert trt == (
        "TensorrtExecutionProvider",
        {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(tmp_path / "model.onnx.trt"),
            "trt_fp16_enable": True,
        },
    )
    assert (cuda, cpu) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert onnxruntime_providers("cuda", every, graph)[0][1]["trt_fp16_enable"] is False
    assert onnxruntime_providers("cuda", every[1:], graph) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(RuntimeGraphError, match="no CUDA or TensorRT execution provider"):
        onnxruntime_providers("cuda", ["CPUExecutionProvider"], graph)
    with pytest.raises(RuntimeGraphError, match="needs --device cuda"):
        onnxruntime_providers("cpu", every, graph, fp16=True)
    with pytest.raises(RuntimeGraphError, match="unknown runtime device"):
        onnxruntime_providers("mps", every, graph)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--runtime", "openvino", "--device", "cuda"], "--runtime openvino runs on the CPU"),
        (["--runtime", "onnxruntime", "--dtype", "fp16"], "--runtime onnxruntime on cpu takes --dtype fp32"),
        (["--runtime", "onnxruntime", "--device", "cuda", "--dtype", "bf16"], "takes --dtype fp32 or fp16"),
    ],
)
def test_detect_cli_runtime_device_and_dtype_errors(flags, message, chelsea_jpg, tmp_path, capsys):
    argv = ["detect", str(chelsea_jpg), "-p", PROMPT, *flags, "--onnx", str(tmp_path / "model.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gdino detect: error: ") and message in err[0], err
