"""``gdino serve`` routes on a real loopback server with the tiny checkpoint: the JSON schema of
``gdino detect``, the Hugging Face task route, segmentation, probes, metrics, every bad input."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra")
httpx = pytest.importorskip("httpx")

from serve_util import running, same_detections  # noqa: E402

from gdino.core.rle import decode_mask  # noqa: E402
from gdino.infer.detector import Detector  # noqa: E402
from gdino.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DEFAULTS = {"image_size": 160, "box_threshold": 0.05}
LIMITS = {
    "max_body_bytes": 2_000_000,
    "max_pixels": 1_000_000,
    "max_classes": 5,
    "max_prompt_tokens": 64,
    "max_image_size": 400,
}


@pytest.fixture(scope="module")
def sam():
    from conftest import randomize_

    from gdino.segment.predictor import SamSegmenter
    from gdino.segment.sam_model import SAM_PRESETS, build_sam

    pytest.importorskip("segment_anything")
    torch.manual_seed(0)
    return SamSegmenter(randomize_(build_sam(SAM_PRESETS["sam-tiny"]), seed=2).eval(), name="sam-tiny")


@pytest.fixture(scope="module")
def server(tiny_model, tiny_checkpoint, sam):
    detector = Detector(tiny_model, **DEFAULTS)
    app = create_app(ServeConfig(weights=str(tiny_checkpoint), max_wait_ms=0, **LIMITS), detector, sam)
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def jpeg(chelsea_jpg) -> bytes:
    return chelsea_jpg.read_bytes()


def post_file(url, data: bytes, route="/v1/detect", name="chelsea.jpg", **fields):
    return httpx.post(url + route, files={"image": (name, data, "image/jpeg")}, data=fields, timeout=60)


def error_of(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and "\n" not in body["error"]
    return body["error"]


def png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_probes_info_docs(server):
    url, _ = server
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(url + "/readyz").json() == {"status": "ready"}
    info = httpx.get(url + "/v1/info").json()
    assert info["segmenter"] == "sam-tiny" and info["limits"]["max_classes"] == 5
    assert info["defaults"]["image_size"] == 160
    spec = httpx.get(url + "/openapi.json").json()
    assert {"/v1/detect", "/v1/segment", "/", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert httpx.get(url + "/docs").status_code == 200
    page = httpx.get(url + "/")
    assert page.status_code == 200 and '<svg id="overlay"' in page.text
    assert httpx.get(url + "/static/app.js").status_code == 200


def test_detect_is_the_json_of_gdino_detect(server, tiny_checkpoint, chelsea_jpg, jpeg, tmp_path):
    from gdino.cli import main

    url, _ = server
    out = tmp_path / "cli.json"
    argv = [
        str(chelsea_jpg),
        "--weights",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--image-size",
        "160",
        "--box-threshold",
        "0.05",
        "-p",
        "a cat . a remote control",
        "--out",
        str(out),
    ]
    assert main(["detect", *argv]) == 0
    cli = json.loads(out.read_text())
    r = post_file(url, jpeg, prompt="a cat . a remote control")
    assert r.status_code == 200, r.text
    served = r.json()
    assert set(served) == set(cli)
    assert served["settings"] == cli["settings"] and served["classes"] == cli["classes"]
    assert served["mode"] == cli["mode"] == "phrases" and served["prompt"] == cli["prompt"]
    res, ref = served["results"][0], cli["results"][0]
    assert (res["width"], res["height"]) == (ref["width"], ref["height"]) == (451, 300)
    assert len(ref["detections"]) > 0
    same_detections(res["detections"], ref["detections"])


def test_json_base64_equals_multipart_and_classes(server, jpeg):
    url, _ = server
    fields = {"classes": ["cat", "remote control"], "box_threshold": 0.1, "max_detections": 7}
    a = post_file(url, jpeg, classes="cat,remote control", box_threshold="0.1", max_detections="7").json()
    b = httpx.post(url + "/v1/detect", json={"image": base64.b64encode(jpeg).decode(), **fields}, timeout=60).json()
    c = httpx.post(
        url + "/v1/detect",
        timeout=60,
        json={"image": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode(), "name": "cat.jpg", **fields},
    ).json()
    assert a["mode"] == "classes" and a["classes"] == ["cat", "remote control"] and "prompt" not in a
    assert a["settings"]["box_threshold"] == 0.1 and a["settings"]["max_detections"] == 7
    assert 0 < len(a["results"][0]["detections"]) <= 7
    assert all(d["score"] > 0.1 for d in a["results"][0]["detections"])
    assert "results" in b and "results" in c, (b, c)
    same_detections(a["results"][0]["detections"], b["results"][0]["detections"])
    same_detections(a["results"][0]["detections"], c["results"][0]["detections"])
    assert c["results"][0]["image"] == "cat.jpg"


def test_hugging_face_route(server, jpeg):
    url, _ = server
    body = {
        "inputs": base64.b64encode(jpeg).decode(),
        "parameters": {"candidate_labels": ["cat", "remote control"], "threshold": 0.1},
    }
    hf = httpx.post(url + "/", json=body, timeout=60)
    assert hf.status_code == 200, hf.text
    hf = hf.json()
    alias = httpx.post(url + "/v1/zero-shot-object-detection", json=body, timeout=60).json()
    ref = post_file(url, jpeg, classes="cat,remote control", box_threshold="0.1").json()["results"][0]["detections"]
    assert len(hf) == len(ref) > 0 and hf == alias
    for h, d in zip(hf, ref):
        assert set(h) == {"label", "score", "box"} and set(h["box"]) == {"xmin", "ymin", "xmax", "ymax"}
        assert h["label"] == d["label"] and h["score"] == d["score"]
        assert [h["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == [round(v) for v in d["box"]]
    comma = dict(body, parameters={"candidate_labels": "cat, remote control", "threshold": 0.1, "top_k": 2})
    assert [h["label"] for h in httpx.post(url + "/", json=comma, timeout=60).json()] == [h["label"] for h in hf[:2]]


def test_segment_masks_match_the_library(server, tiny_model, sam, chelsea_jpg, jpeg):
    url, _ = server
    r = post_file(url, jpeg, route="/v1/segment", classes="cat", max_detections="3")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["segmenter"] == "sam-tiny"
    dets = doc["results"][0]["detections"]
    ref = Detector(tiny_model, **DEFAULTS).segment(chelsea_jpg, ["cat"], sam, max_detections=3)[0]
    assert len(dets) == len(ref) > 0
    for d, mask, score in zip(dets, ref.masks, ref.mask_scores):
        got = decode_mask(d["mask"])
        assert got.shape == (300, 451)
        assert (got != np.asarray(mask)).mean() < 1e-3  # masks of boxes equal up to float rounding
        assert abs(d["mask_score"] - float(score)) < 1e-3


@pytest.mark.parametrize(
    "fields, status, words",
    [
        ({"prompt": ""}, 400, "names nothing"),
        ({"prompt": " . , ."}, 400, "prompt"),
        ({"classes": "a,b,c,d,e,f"}, 400, "6 names, the limit is 5"),
        ({"prompt": " . ".join(f"thing{i}" for i in range(40))}, 400, "tokens"),
        ({}, 400, "exactly one"),
        ({"prompt": "a cat", "classes": "cat"}, 400, "exactly one"),
        ({"prompt": "a cat", "image_size": "800"}, 400, "limit of 400"),
        ({"prompt": "a cat", "colour": "red"}, 422, "colour"),
        ({"prompt": "a cat", "box_threshold": "2"}, 422, "box_threshold"),
        ({"prompt": "a cat", "max_detections": "many"}, 422, "max_detections"),
    ],
)
def test_bad_fields(server, jpeg, fields, status, words):
    url, _ = server
    assert words in error_of(post_file(url, jpeg, **fields), status)


def test_bad_json_bodies(server, jpeg):
    url, _ = server
    good = base64.b64encode(jpeg).decode()
    assert "colour" in error_of(httpx.post(url + "/v1/detect", json={"image": good, "prompt": "a", "colour": 1}), 422)
    assert "image" in error_of(httpx.post(url + "/v1/detect", json={"prompt": "a cat"}), 422)
    assert "base64" in error_of(httpx.post(url + "/v1/detect", json={"image": "%%%", "prompt": "a"}), 400)
    assert "no URLs" in error_of(
        httpx.post(url + "/v1/detect", json={"image": "https://x.org/a.jpg", "prompt": "a"}), 400
    )
    assert error_of(
        httpx.post(url + "/v1/detect", content=b"{not json", headers={"content-type": "application/json"}), 422
    )
    assert "multipart" in error_of(
        httpx.post(url + "/v1/detect", content=b"x", headers={"content-type": "text/plain"}), 415
    )
    hf_extra = {"inputs": good, "parameters": {"candidate_labels": ["cat"]}, "options": {}}
    assert "options" in error_of(httpx.post(url + "/", json=hf_extra), 422)
    assert error_of(httpx.post(url + "/v1/detect", data={"prompt": "a cat"}, files={"other": ("x", b"1")}), 422)


def test_bad_images(server, jpeg):
    url, _ = server
    assert "not an image" in error_of(post_file(url, b"hello, not an image", prompt="a cat"), 400)
    assert "truncated" in error_of(post_file(url, jpeg[: len(jpeg) // 2], prompt="a cat"), 400)
    assert "empty" in error_of(post_file(url, b"", prompt="a cat"), 400)
    assert "exceeds the limit" in error_of(post_file(url, png((2000, 1000)), name="big.png", prompt="a"), 413)
    bomb = png((15000, 15000), mode="1")  # 225 Mpx in a small file: over Pillow's own bomb limit too
    assert len(bomb) < 2_000_000
    assert "decompression bomb" in error_of(post_file(url, bomb, name="bomb.png", prompt="a"), 413)
    assert "limit" in error_of(post_file(url, b"\0" * 2_100_000, prompt="a cat"), 413)
    chunked = httpx.post(
        url + "/v1/detect", content=iter([b"{" + b" " * 1_000_000] * 3), headers={"content-type": "application/json"}
    )
    assert "limit" in error_of(chunked, 413)
    # nothing else disturbed: the server still answers
    assert post_file(url, jpeg, prompt="a cat").status_code == 200


def test_segment_needs_a_segmenter(tiny_model, jpeg):
    app = create_app(ServeConfig(warmup=False), Detector(tiny_model, **DEFAULTS))
    with running(app) as url:
        assert "--segmenter" in error_of(post_file(url, jpeg, route="/v1/segment", prompt="a cat"), 501)


def test_metrics_count_routes_statuses_and_batches(server, jpeg):
    url, _ = server
    post_file(url, jpeg, prompt="a cat")
    post_file(url, b"junk", prompt="a cat")
    text = httpx.get(url + "/metrics").text
    assert 'gdino_requests_total{route="/v1/detect",status="200"}' in text
    assert 'gdino_requests_total{route="/v1/detect",status="400"}' in text
    assert "gdino_request_seconds_bucket" in text and "gdino_queue_depth" in text
    count = [ln for ln in text.splitlines() if ln.startswith("gdino_batch_size_count")]
    assert count and float(count[0].split()[-1]) >= 2
