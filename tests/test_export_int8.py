"""int8 export (ONNX Runtime dynamic quantization of the fp32 graph); the slow tests reuse the session
exports of ``tiny_model`` (conftest.py).

What is checked, and why this way:

- the quantization itself, exactly, against the fp32 file: every MatMul with a constant weight
  becomes ``MatMulInteger``, and each int8 weight column dequantizes to the fp32 column within half
  a quantization step (symmetric: zero point 0, scale = max |column| / 127);
- the int8 text graph of the split export against the PyTorch text features: a numeric tolerance
  measured on this path (BERT and ``feat_map``, all their linear layers int8; no query selection);
- the int8 detection graph runs with the fp32 graph's shapes and ``-inf`` pattern.

The whole detector is not compared per detection on the random-weight parity case: there, a 0.2 %
random perturbation of the weights already changes most of the 50 selected queries (measured on
the cat photo at 320x213: 23 of 50 fp32 queries still have a query with the box within 0.01 (L1)
and logits within 2 %; 0 of 50 with a 2 % perturbation), so per-detection tolerances
cannot separate int8 from a broken graph. int8's accuracy is measured as AP on a trained model
instead (benchmarks/precision_ap.py, table in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

#: int8 text graph vs PyTorch: max |feature diff| / max |feature| (measured 2.4e-2 on this case; the fp32
#: text graph: 4e-7)
TEXT_REL_TOL = 4e-2
CAPTIONS = ["a cat . a remote control . the green sofa . a striped blanket .", "dog ."]


@pytest.fixture(scope="module")
def int8_file(onnx_file, tmp_path_factory):
    """The fp32 session export quantized through the command line (``.onnx`` in, ``--dtype int8``)."""
    pytest.importorskip("onnxruntime", reason="optional dependency onnxruntime (in [export] and [dev])")
    from gdino.cli import main

    out = tmp_path_factory.mktemp("int8") / "tiny-int8.onnx"
    assert main(["export", str(onnx_file), str(out), "--dtype", "int8"]) == 0
    return out


def _initializers(path):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    return proto, {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


@pytest.mark.slow
def test_int8_graph_quantizes_every_linear_weight(onnx_file, int8_file):
    from gdino.export.runtimes import read_metadata

    fp32, fp32_init = _initializers(onnx_file)
    int8, int8_init = _initializers(int8_file)
    weights = [n.input[1] for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in fp32_init]
    quantized = [n.input[1] for n in int8.graph.node if n.op_type == "MatMulInteger"]
    assert len(weights) > 50 and sorted(quantized) == sorted(w + "_quantized" for w in weights)
    for name in weights:
        w = fp32_init[name]
        q, scale, zero = (int8_init[name + s] for s in ("_quantized", "_scale", "_zero_point"))
        assert q.dtype == np.int8 and q.shape == w.shape and scale.shape == (w.shape[1],)  # per output channel
        assert not zero.any()  # symmetric
        np.testing.assert_allclose(scale, np.abs(w).max(0) / 127, rtol=1e-6)
        assert (np.abs(q.astype(np.float32) * scale - w) <= scale / 2 * (1 + 1e-5) + 1e-12).all(), name
    meta = read_metadata(int8_file)
    assert meta["gdino_dtype"] == "int8" and "per output channel" in meta["gdino_quantization"]
    assert meta["gdino_config"] == read_metadata(onnx_file)["gdino_config"]
    assert int8_file.stat().st_size < 0.8 * onnx_file.stat().st_size


@pytest.mark.slow
def test_int8_text_graph_near_pytorch(tiny_model, split_files, tmp_path):
    from gdino.export.quantize import quantize_int8
    from gdino.export.runtimes import Session, text_feeds

    text_int8 = quantize_int8(split_files[0], tmp_path / "tiny.text.int8.onnx")
    text = tiny_model.tokenize(CAPTIONS)
    with torch.no_grad():
        want = tiny_model.encode_text(text).features.numpy()
    (got,) = Session(text_int8, "onnxruntime", 1, "f32", None).run(text_feeds(text))
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < rel <= TEXT_REL_TOL, rel  # > 0: the graph really is quantized


@pytest.mark.slow
def test_int8_detection_graph_runs_like_fp32(tiny_model, onnx_file, int8_file):
    from gdino.export.graph import INPUT_NAMES
    from gdino.export.runtimes import Session

    text = tiny_model.tokenize(CAPTIONS)
    feeds = {name: getattr(text, name).long().numpy() for name in INPUT_NAMES[:5]}
    feeds["pixel_values"] = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(1)).numpy()
    feeds["pixel_mask"] = np.ones((2, 160, 224), dtype=np.int64)
    ref_logits, ref_boxes = Session(onnx_file, "onnxruntime", 1, "f32", None).run(feeds)
    logits, boxes = Session(int8_file, "onnxruntime", 1, "f32", None).run(feeds)
    assert logits.shape == ref_logits.shape and boxes.shape == ref_boxes.shape
    assert np.array_equal(np.isfinite(logits), np.isfinite(ref_logits))  # -inf exactly at padding tokens
    assert np.isfinite(boxes).all() and (boxes >= 0).all() and (boxes <= 1).all()
    assert not np.array_equal(logits, ref_logits)


@pytest.mark.slow
def test_export_quantizes_only_an_fp32_detection_graph(onnx_file, int8_file, tmp_path, capsys):
    from gdino.cli import main

    for argv, message in (
        (["export", str(onnx_file), str(tmp_path / "o.onnx")], "only taken with --dtype int8"),
        (["export", str(int8_file), str(tmp_path / "o.onnx"), "--dtype", "int8"], "not an fp32 detection graph"),
        (["export", str(onnx_file), str(onnx_file), "--dtype", "int8"], "must differ"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gdino export: error: ") and message in err[0]


def test_export_onnx_int8_quantizes_what_it_traced(tiny_model, tmp_path, monkeypatch):
    """``export_onnx(..., dtype="int8")``: the traced fp32 graph (here a stand-in: one linear layer,
    written by a patched ``export_graph``) is quantized into OUT with int8 metadata, and the fp32
    intermediate file is removed."""
    onnx = pytest.importorskip("onnx", reason="optional dependency onnx (in [export] and [dev])")
    pytest.importorskip("onnxruntime", reason="optional dependency onnxruntime (in [export] and [dev])")
    from onnx import TensorProto, helper, numpy_helper

    from gdino.export import onnx_export
    from gdino.export.runtimes import Session, read_metadata

    weight = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)

    def fake_export(graph, path, options, metadata):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])
        body = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [numpy_helper.from_array(weight, "w")]
        )
        proto = helper.make_model(body, opset_imports=[helper.make_opsetid("", 18)])
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(path))
        return path

    monkeypatch.setattr(onnx_export, "export_graph", fake_export)
    out = tmp_path / "m.onnx"
    assert onnx_export.export_onnx(tiny_model, out, onnx_export.ExportOptions(dtype="int8")) == [out]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no fp32 or temporary file left
    meta = read_metadata(out)
    assert meta["gdino_dtype"] == "int8" and meta["gdino_graph"] == "detection" and "gdino_quantization" in meta
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("MatMulInteger") == 1
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    (y,) = Session(out, "onnxruntime", 1, "f32", None).run({"x": x})
    # int8 weights (step max|w|/127 per column) and uint8 activations: measured 0.7 %, allowed 2 %
    assert np.abs(y - x @ weight).max() <= 0.02 * np.abs(x @ weight).max()
