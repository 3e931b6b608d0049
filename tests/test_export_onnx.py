"""ONNX export: the export branches of the model (eager, fast), and the exported graph run by ONNX
Runtime and OpenVINO against the PyTorch model (slow: one export per module, ~1-3 min on 2 cores).

Reference: the PyTorch model's ``forward`` (reference path: ``embedding_bag`` gather, chunked FFNs),
on the ``tiny`` preset with every parameter randomized at a realistic scale (fusion gammas ~0.5).
Tolerances (the issue's): boxes <= 1e-4, logits <= 1e-4 x the largest finite |logit|; the -inf
pattern (padding tokens) must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdino.export.graph import INPUT_NAMES, DetectionGraph

BOX_TOL = 1e-4
LOGIT_REL_TOL = 1e-4
#: four phrases: a graph that scores only the first phrase fails on the others' token columns
MULTI = "a cat . a remote control . the green sofa . a striped blanket ."
SHORT = "dog ."

pytestmark = pytest.mark.usefixtures("one_thread")


def feeds(model, captions, pixels, mask):
    text = model.tokenize(captions)
    out = {name: getattr(text, name).long() for name in INPUT_NAMES[:5]}
    out["pixel_values"], out["pixel_mask"] = pixels, mask.long()
    return out


def images(batch, h, w, seed=0, pad_second=False):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, h, w, generator=gen)
    mask = torch.ones(batch, h, w, dtype=torch.bool)
    if pad_second and batch > 1:  # the second image is smaller: padded bottom/right as in pad_batch
        mask[1, h - h // 4 :, :] = False
        mask[1, :, w - w // 3 :] = False
        pixels[1][:, ~mask[1]] = 0
    return pixels, mask


def reference(model, f):
    with torch.no_grad():
        logits, boxes = DetectionGraph(model)(*[f[n] for n in INPUT_NAMES])
    return logits.numpy(), boxes.numpy()


def assert_parity(ref, got, box_tol=BOX_TOL, rel_tol=LOGIT_REL_TOL):
    (ref_logits, ref_boxes), (logits, boxes) = ref, got
    assert logits.shape == ref_logits.shape and boxes.shape == ref_boxes.shape
    finite = np.isfinite(ref_logits)
    assert np.array_equal(np.isfinite(logits), finite), "padding (-inf) pattern differs"
    scale = np.abs(ref_logits[finite]).max()
    assert np.abs(logits[finite] - ref_logits[finite]).max() <= rel_tol * scale
    assert np.abs(boxes - ref_boxes).max() <= box_tol


def phrase_columns(model, caption):
    """Token columns of every phrase (between the ' . ' separators) of a one-caption tokenization."""
    ids = model.tokenize([caption]).input_ids[0].tolist()
    dot = model.tokenizer.convert_tokens_to_ids(".")
    spans, start = [], 1
    for i, t in enumerate(ids):
        if t in (dot, 102):
            if i > start:
                spans.append(list(range(start, i)))
            start = i + 1
    return spans


# ---------------------------------------------------------------- fast: export branches in eager mode
@pytest.mark.parametrize("size", [(192, 256), (100, 150)])
def test_export_branches_match_reference_path(tiny_model, size, monkeypatch):
    """The branches taken under torch.export (grid-reshape Swin windows, row-gather deformable
    sampling, unchunked FFNs, unpadded logits), run eagerly, give the reference path's outputs."""
    f = feeds(tiny_model, [MULTI, SHORT], *images(2, *size, pad_second=True))
    ref = reference(tiny_model, f)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    got = reference(tiny_model, f)
    assert_parity(ref, got, box_tol=1e-5, rel_tol=1e-5)


def test_export_options_reject_bad_values():
    from gdino.errors import GdinoError
    from gdino.export.onnx_export import ExportOptions

    for bad in ({"opset": 12}, {"dtype": "int4"}, {"batch": 0}, {"image_size": (10, 10)}):
        with pytest.raises(GdinoError):
            ExportOptions(**bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "W", "o.onnx", "--batch", "two"], "--batch must be"),
        (["export", "W", "o.onnx", "--image-size", "800"], "--image-size must be HxW"),
        (["detect", "x.jpg", "-p", "cat", "--runtime", "onnxruntime"], "needs --onnx"),
        (["detect", "x.jpg", "-p", "cat", "--onnx", "m.onnx"], "--onnx needs --runtime"),
        (
            ["detect", "x.jpg", "-p", "cat", "--runtime", "onnxruntime", "--onnx", "m.onnx", "--dtype", "bf16"],
            "takes --dtype fp32",
        ),
    ],
)
def test_cli_bad_export_and_runtime_options(argv, message, capsys, chelsea_jpg):
    from gdino.cli import main

    argv = [str(chelsea_jpg) if a == "x.jpg" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gdino {argv[0]}: error: ") and message in err[0]


# ---------------------------------------------------------------- slow: the exported graph in the runtimes
# (the exports: the session fixtures onnx_file and split_files of conftest.py)
def _session(path, runtime):
    from gdino.export.runtimes import Session

    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="optional dependency onnxruntime (in [export] and [dev])")
    else:
        pytest.importorskip("openvino", reason="optional dependency openvino (in [openvino] and [dev])")
    return Session(path, runtime, threads=1, precision="f32", providers=None)


CASES = {
    # multi-phrase prompt, one image, a size unlike the export's
    "multi_phrase": ([MULTI], 1, (192, 256), False),
    # a batch of two images with different prompts of different lengths, the second one padded
    "batch_two_prompts": ([MULTI, SHORT], 2, (224, 160), True),
    # a short prompt, an odd size (Swin pads every stage)
    "short_odd_size": ([SHORT], 1, (131, 197), False),
}


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_runtime_matches_pytorch(onnx_file, tiny_model, runtime, case):
    captions, batch, size, pad = CASES[case]
    f = feeds(tiny_model, captions, *images(batch, *size, seed=3, pad_second=pad))
    session = _session(onnx_file, runtime)
    got = session.run({k: v.numpy() for k, v in f.items()})
    assert_parity(reference(tiny_model, f), tuple(got))


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_every_phrase_scores(onnx_file, tiny_model, runtime):
    """Each phrase of a four-phrase prompt gets finite logits equal to PyTorch's, in its own columns
    (the community export scored only the first phrase: the others came out -inf or wrong)."""
    f = feeds(tiny_model, [MULTI], *images(1, 160, 224, seed=5))
    ref_logits, _ = reference(tiny_model, f)
    logits, _ = _session(onnx_file, runtime).run({k: v.numpy() for k, v in f.items()})
    spans = phrase_columns(tiny_model, MULTI)
    assert len(spans) == 4
    scale = np.abs(ref_logits[np.isfinite(ref_logits)]).max()
    for cols in spans:
        assert np.isfinite(logits[0][:, cols]).all()
        assert np.abs(logits[0][:, cols] - ref_logits[0][:, cols]).max() <= LOGIT_REL_TOL * scale
    # the phrases are scored differently (a graph copying the first phrase's scores fails)
    assert np.abs(logits[0][:, spans[0]].max(1) - logits[0][:, spans[-1]].max(1)).max() > 1e-2


@pytest.mark.slow
def test_metadata_and_checker(onnx_file, tiny_model):
    import onnx

    from gdino.export.runtimes import read_metadata

    onnx.checker.check_model(str(onnx_file), full_check=True)
    proto = onnx.load(str(onnx_file))
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == ["logits", "boxes"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert all(isinstance(d, str) for d in dims["pixel_values"][:1] + dims["pixel_values"][2:]), dims
    assert isinstance(dims["input_ids"][1], str), dims
    meta = read_metadata(onnx_file)
    import hashlib
    import json

    from gdino.config import GroundingDINOConfig

    assert GroundingDINOConfig.from_dict(json.loads(meta["gdino_config"])) == tiny_model.config
    assert meta["gdino_vocab_sha256"] == hashlib.sha256(meta["gdino_vocab"].encode()).hexdigest()
    assert meta["gdino_vocab"].splitlines()[101] == "[CLS]"


@pytest.mark.slow
def test_detect_through_runtime_equals_pytorch_detect(onnx_file, tiny_model, chelsea_jpg):
    """The library's detect (preprocessing, decoding, Detections) gives the same detections with the
    graph run by ONNX Runtime as with the PyTorch model."""
    pytest.importorskip("onnxruntime", reason="optional dependency onnxruntime (in [export] and [dev])")
    from gdino.export.runtimes import RuntimeModel
    from gdino.infer.detector import Detector

    runtime = RuntimeModel(onnx_file, "onnxruntime", threads=1)
    for prompt in (MULTI, ["cat", "remote control", "sofa"]):
        want = Detector(tiny_model, box_threshold=0.0, image_size=320).detect([str(chelsea_jpg)], prompt)[0]
        got = runtime.detect([str(chelsea_jpg)], prompt, box_threshold=0.0, image_size=320)[0]
        assert len(want) == len(got) > 0
        assert want.labels == got.labels
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-4 * 1000)  # pixels of a ~500 px photo


@pytest.mark.slow
def test_split_graphs_match_pytorch(tiny_model, split_files):
    """``--split``: the text graph gives ``encode_text``'s features; the rest, fed them, gives the
    single graph's outputs; and the runtime model uses the pair (prompt features computed once)."""
    from gdino.export.runtimes import RuntimeModel, text_feeds

    text_path, features_path = split_files
    tmp_path = text_path.parent
    assert text_path.name == "tiny.text.onnx" and features_path.name == "tiny.features.onnx"
    f = feeds(tiny_model, [MULTI, SHORT], *images(2, 192, 256, seed=7, pad_second=True))
    text = tiny_model.tokenize([MULTI, SHORT])
    with torch.no_grad():
        want_features = tiny_model.encode_text(text).features.numpy()
    (features,) = _session(text_path, "onnxruntime").run(text_feeds(text))
    assert np.abs(features - want_features).max() <= 1e-4 * np.abs(want_features).max()
    runtime = RuntimeModel(tmp_path / "tiny.onnx", "onnxruntime", threads=1)
    assert runtime.split
    out = runtime(f["pixel_values"], text, f["pixel_mask"].bool())
    length = text.input_ids.shape[1]
    assert_parity(reference(tiny_model, f), (out.logits[..., :length].numpy(), out.boxes.numpy()))


def test_runtime_model_rejects_bad_files(tmp_path):
    """A file that is not ONNX, and an ONNX file without gdino metadata: one-line GdinoErrors."""
    onnx = pytest.importorskip("onnx", reason="optional dependency onnx (in [export] and [dev])")
    from onnx import TensorProto, helper

    from gdino.errors import GdinoError
    from gdino.export.runtimes import RuntimeModel

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx file" * 10)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])), plain)
    for path, message in (
        (junk, "not a readable ONNX file"),
        (plain, "no gdino metadata"),
        (tmp_path / "none.onnx", "not found"),
    ):
        with pytest.raises(GdinoError, match=message) as info:
            RuntimeModel(path, "onnxruntime")
        assert "\n" not in str(info.value)
