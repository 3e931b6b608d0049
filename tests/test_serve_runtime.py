"""``gdino serve --runtime onnxruntime|openvino --onnx FILE``: the service runs the exported graph
behind the same routes, batching and JSON as with the PyTorch model.

- The server's mixed-prompt forward (:func:`gdino.serve.forward.detect_mixed`) with a runtime
  model: each request's Detections equal the runtime's own unbatched ``detect`` (scores within
  1e-5) and the PyTorch model's (scores within 1e-4, boxes within 0.1 px), for the single graph
  and the split text/rest graphs.
- The service started by ``gdino serve --runtime ...`` (in-process through ``gdino.cli.main``,
  with ``uvicorn.run`` replaced by the test's loopback server) answers ``/v1/detect`` with the
  detections of the PyTorch service started by ``gdino serve --weights ...``; concurrent requests
  with different prompts share one graph call and each gets its result alone; bad input is a
  one-line 4xx JSON.

Tolerances of the JSON comparisons: 1e-4 on scores and 0.1 px on boxes (the photo is 451x300),
plus the JSON's rounding (scores to 4 decimals, boxes to 2: up to 1e-4 and 0.01 between two
rounded values). The exports are the session's ``onnx_file`` / ``split_files`` (slow).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the [serve] extra")
httpx = pytest.importorskip("httpx")

from serve_util import queue_behind_gate, running, same_detections, three_photos  # noqa: E402

from gdino.cli import main  # noqa: E402
from gdino.infer.detector import Detector  # noqa: E402
from gdino.serve.forward import Item, detect_mixed  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RUNTIMES = ["onnxruntime", "openvino"]
FLAGS = ["--image-size", "160", "--box-threshold", "0.0", "--text-threshold", "0.0", "--max-classes", "5"]
REQUESTS = [
    {"prompt": "a cat . a remote control . the green sofa .", "max_detections": "20"},
    {"classes": "dog,sofa,a very long class name here", "max_detections": "20"},
    {"prompt": "the ear", "box_threshold": "0.2"},
    {"classes": "cat", "max_detections": "5"},
]
OPTS = {"box_threshold": 0.0, "text_threshold": 0.0, "image_size": 160}


def assert_same(a, b, score_tol, box_tol):
    assert a.labels == b.labels
    assert torch.equal(a.class_ids, b.class_ids)
    torch.testing.assert_close(a.scores, b.scores, atol=score_tol, rtol=0)
    torch.testing.assert_close(a.xyxy, b.xyxy, atol=box_tol, rtol=0)


@pytest.fixture(scope="module")
def jpeg(chelsea_jpg) -> bytes:
    return chelsea_jpg.read_bytes()


def detect(url, jpeg, fields, route="/v1/detect", data=None):
    files = {"image": ("chelsea.jpg", jpeg if data is None else data, "image/jpeg")}
    return httpx.post(url + route, files=files, data=fields, timeout=120)


def served_app(argv):
    """The app ``gdino serve ARGV`` builds (``uvicorn.run`` is intercepted, nothing binds)."""
    import uvicorn

    apps = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(uvicorn, "run", lambda app, **kw: apps.append((app, kw)))
        assert main(["serve", *argv]) == 0
    ((app, kw),) = apps
    assert kw["host"] == "127.0.0.1"
    return app


@pytest.fixture(scope="module")
def torch_server(tiny_checkpoint):
    app = served_app(["--weights", str(tiny_checkpoint), "--device", "cpu", *FLAGS])
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module", params=RUNTIMES)
def runtime_server(request, onnx_file):
    pytest.importorskip(request.param, reason=f"optional dependency {request.param} (in [export]/[openvino])")
    app = served_app(["--runtime", request.param, "--onnx", str(onnx_file), "--max-wait-ms", "50", *FLAGS])
    with running(app) as url:
        yield url, app


# ---------------------------------------------------------------------------- the mixed forward
@pytest.fixture(scope="module")
def photos(chelsea_jpg):
    return three_photos(chelsea_jpg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "runtime, graph", [("onnxruntime", "single"), ("openvino", "single"), ("onnxruntime", "split")]
)
def test_mixed_forward_equals_each_alone(runtime, graph, request, tiny_model, photos):
    pytest.importorskip(runtime, reason=f"optional dependency {runtime} (in [export]/[openvino])")
    from gdino.export.runtimes import RuntimeModel

    path = request.getfixturevalue("onnx_file" if graph == "single" else "split_files")
    path = path if graph == "single" else path[0].with_name("tiny.onnx")  # the split pair by its export name
    model = RuntimeModel(path, runtime, threads=1)
    assert model.split == (graph == "split")
    detector = Detector(model, **OPTS)
    reference = Detector(tiny_model, **OPTS)
    opts = detector.resolve(None, {})
    two_chunks = detector.resolve(None, {"classes_per_prompt": 2})
    prompts = [
        ("a cat . a remote control . the green sofa .", opts),
        (["dog", "sofa", "a very long class name here"], two_chunks),  # two rows of the batch, one image
        ("the ear", opts),
    ]
    items = [Item(detector.prepare(img, options=o), detector.prompt(p, o), o) for img, (p, o) in zip(photos, prompts)]
    assert sum(len(it.prompt.chunks) for it in items) == 4
    before = detector.stats["forwards"]
    mixed = detect_mixed(detector, items)
    assert detector.stats["forwards"] == before + 1  # four text rows of three prompts: one graph call
    for img, (p, o), got in zip(photos, prompts, mixed):
        alone = detector.detect(img, p, o)[0]  # the runtime, one image, one prompt
        assert len(alone) > 0
        assert_same(got, alone, 1e-5, 1e-3)
        assert_same(got, reference.detect(img, p, o)[0], 1e-4, 0.1)  # the PyTorch model


# ---------------------------------------------------------------------------- the service
@pytest.mark.slow
def test_runtime_service_equals_pytorch_service(runtime_server, torch_server, jpeg, onnx_file):
    (url, _), (torch_url, _) = runtime_server, torch_server
    for fields in REQUESTS[:2]:
        got, want = detect(url, jpeg, fields), detect(torch_url, jpeg, fields)
        assert got.status_code == want.status_code == 200, (got.text, want.text)
        got_doc, want_doc = got.json(), want.json()
        assert got_doc["weights"] == str(onnx_file)
        assert got_doc["settings"] == want_doc["settings"] and got_doc["classes"] == want_doc["classes"]
        dets, ref = got_doc["results"][0]["detections"], want_doc["results"][0]["detections"]
        assert len(dets) == len(ref) == 20
        same_detections(dets, ref, score_tol=1e-4 + 1e-4, box_tol=0.1 + 0.01)
    info = httpx.get(url + "/v1/info").json()
    assert info["ready"] and info["device"] == "cpu" and info["weights"] == str(onnx_file)


@pytest.mark.slow
def test_runtime_service_batches_different_prompts(runtime_server, jpeg):
    url, app = runtime_server
    batcher = app.state.service.batcher
    alone = []
    for fields in REQUESTS:  # one at a time: a graph call each
        r = detect(url, jpeg, fields)
        assert r.status_code == 200, r.text
        alone.append(r.json())
    sizes = batcher.batch_sizes.copy()
    first, batched = queue_behind_gate(app, batcher, lambda f: detect(url, jpeg, f), REQUESTS)
    assert first.status_code == 200
    assert batcher.batch_sizes[len(REQUESTS)] == sizes[len(REQUESTS)] + 1  # the four prompts: one graph call
    for a, b in zip(alone, batched):
        assert b.status_code == 200, b.text
        b_doc = b.json()
        assert a["settings"] == b_doc["settings"] and a["classes"] == b_doc["classes"]
        assert len(a["results"][0]["detections"]) > 0
        same_detections(a["results"][0]["detections"], b_doc["results"][0]["detections"])


@pytest.mark.slow
def test_runtime_service_bad_input_is_4xx_json(runtime_server, jpeg):
    url, _ = runtime_server
    cases = [
        (detect(url, jpeg, {"prompt": ""}), 400, "names nothing"),
        (detect(url, jpeg, {"classes": "a,b,c,d,e,f"}), 400, "the limit is 5"),
        (detect(url, jpeg, {"prompt": "a cat", "box_threshold": "2"}), 422, "box_threshold"),
        (detect(url, jpeg, {"prompt": "a cat"}, data=b"hello, not an image"), 400, "not an image"),
        (detect(url, jpeg, {"prompt": "a cat"}, route="/v1/segment"), 501, "--segmenter"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, r.text
        body = r.json()
        assert body["status"] == status and words in body["error"] and "\n" not in body["error"]
    assert detect(url, jpeg, {"prompt": "a cat"}).status_code == 200  # still serving


# ---------------------------------------------------------------------------- command-line errors
@pytest.mark.parametrize(
    "argv, words",
    [
        (["--runtime", "onnxruntime"], "needs --onnx FILE"),
        (["--runtime", "onnxruntime", "--onnx", "m.onnx", "--dtype", "bf16"], "takes --dtype fp32"),
        (["--runtime", "openvino", "--onnx", "m.onnx", "--device", "cuda"], "runs on the CPU"),
        (["--onnx", "m.onnx"], "--onnx needs --runtime"),
        (["--runtime", "onnxruntime", "--onnx", "/nonexistent/m.onnx"], "ONNX file not found"),
    ],
)
def test_serve_runtime_flag_errors(argv, words, capsys):
    pytest.importorskip("onnx", reason="optional dependency onnx (in [export])")
    assert main(["serve", "--port", "1", *argv]) == 2  # before any server starts (port 1 would fail to bind)
    err = capsys.readouterr().err.strip()
    assert err.startswith("gdino serve: error:") and words in err and "\n" not in err
