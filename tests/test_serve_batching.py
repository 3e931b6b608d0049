"""Server-side batching: a request's result is the same alone or batched with other prompts (and
the batch really formed); queue full (429), deadlines (504), start-up failure (503), API key,
CORS, and SIGTERM draining the requests in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra")
httpx = pytest.importorskip("httpx")

from serve_util import gate, queue_behind_gate, running, same_detections  # noqa: E402

from gdino.infer.detector import Detector  # noqa: E402
from gdino.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DEFAULTS = {"image_size": 160, "box_threshold": 0.05}
REQUESTS = [
    {"prompt": "a cat . a remote control"},
    {"classes": "dog,sofa,a very long class name here"},
    {"prompt": "the ear", "box_threshold": "0.2"},  # decoding-only option: still batched
    {"classes": "cat", "max_detections": "2"},
]


@pytest.fixture(scope="module")
def jpeg(chelsea_jpg) -> bytes:
    return chelsea_jpg.read_bytes()


def detect(url, jpeg, fields, **kw):
    return httpx.post(
        url + "/v1/detect", files={"image": ("chelsea.jpg", jpeg, "image/jpeg")}, data=fields, timeout=120, **kw
    )


def test_batched_results_equal_alone(tiny_model, jpeg):
    app = create_app(ServeConfig(max_batch=8, max_wait_ms=50, warmup=False), Detector(tiny_model, **DEFAULTS))
    with running(app) as url:
        batcher = app.state.service.batcher
        alone = []
        for fields in REQUESTS:  # one at a time: each runs in a forward of its own
            r = detect(url, jpeg, fields)
            assert r.status_code == 200, r.text
            alone.append(r.json())
        assert set(batcher.batch_sizes) == {1}
        encodes = app.state.service.detector.stats["text_encodes"]
        first, queued = queue_behind_gate(app, batcher, lambda f: detect(url, jpeg, f), REQUESTS)
        batched = [r.json() for r in queued]
        assert first.status_code == 200
        assert batcher.batch_sizes[len(REQUESTS)] == 1  # the four prompts ran in one forward
        assert app.state.service.detector.stats["text_encodes"] == encodes  # repeated prompts: cached text
        metrics = httpx.get(url + "/metrics").text
        assert f'gdino_batch_size_bucket{{le="{len(REQUESTS)}.0"}}' in metrics
    for a, b in zip(alone, batched):
        assert a["settings"] == b["settings"] and a["classes"] == b["classes"]
        assert len(a["results"][0]["detections"]) > 0
        same_detections(a["results"][0]["detections"], b["results"][0]["detections"])


def test_different_image_sizes_do_not_share_a_forward(tiny_model, jpeg):
    app = create_app(ServeConfig(max_batch=8, max_wait_ms=50, warmup=False), Detector(tiny_model, **DEFAULTS))
    with running(app) as url:
        with ThreadPoolExecutor(3) as pool, gate(app) as (release, started):
            first = pool.submit(detect, url, jpeg, {"prompt": "a cat"})
            assert started.wait(30)
            sized = [pool.submit(detect, url, jpeg, {"prompt": "a cat", "image_size": str(s)}) for s in (128, 160)]
            while app.state.service.batcher.depth < 2:
                time.sleep(0.01)
            release.set()
            assert all(f.result().status_code == 200 for f in [first, *sized])
        assert app.state.service.batcher.batch_sizes[1] == 3  # one collected batch, two forwards


def test_queue_full_is_429_with_retry_after(tiny_model, jpeg):
    app = create_app(ServeConfig(max_batch=1, queue_size=1, warmup=False), Detector(tiny_model, **DEFAULTS))
    with running(app) as url:
        with ThreadPoolExecutor(2) as pool, gate(app) as (release, started):
            running_one = pool.submit(detect, url, jpeg, {"prompt": "a cat"})
            assert started.wait(30)
            queued = pool.submit(detect, url, jpeg, {"prompt": "a dog"})
            while app.state.service.batcher.depth < 1:
                time.sleep(0.01)
            refused = detect(url, jpeg, {"prompt": "a bird"})
            assert refused.status_code == 429 and refused.json()["status"] == 429
            assert int(refused.headers["retry-after"]) >= 1
            release.set()
            assert running_one.result().status_code == 200 and queued.result().status_code == 200
        assert 'gdino_requests_total{route="/v1/detect",status="429"} 1.0' in httpx.get(url + "/metrics").text


def test_deadline_is_504_and_expired_requests_are_not_run(tiny_model, jpeg):
    app = create_app(ServeConfig(max_batch=1, timeout_s=1.0, warmup=False), Detector(tiny_model, **DEFAULTS))
    with running(app) as url:
        with ThreadPoolExecutor(2) as pool, gate(app) as (release, started):
            held = pool.submit(detect, url, jpeg, {"prompt": "a cat"})
            assert started.wait(30)
            waiting = pool.submit(detect, url, jpeg, {"prompt": "a dog"})
            assert held.result().status_code == 504
            r = waiting.result()
            assert r.status_code == 504 and "deadline" in r.json()["error"]
        release.set()
        batcher = app.state.service.batcher
        deadline = time.monotonic() + 30
        while batcher.batch_sizes[1] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert batcher.batch_sizes == {1: 1}  # the held one ran; the expired one was dropped
        assert httpx.get(url + "/healthz").status_code == 200


def test_start_up_failure_is_503(tmp_path, jpeg):
    app = create_app(ServeConfig(weights=str(tmp_path / "missing.safetensors"), device="cpu"))
    with running(app, ready=False) as url:
        deadline = time.monotonic() + 30
        while (r := httpx.get(url + "/readyz")).json().get("state") != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.status_code == 503 and "missing.safetensors" in r.json()["error"]
        assert detect(url, jpeg, {"prompt": "a cat"}).status_code == 503
        assert httpx.get(url + "/healthz").status_code == 200


def test_api_key_and_cors(tiny_model, jpeg):
    cfg = ServeConfig(api_key="s3cret", warmup=False)
    with running(create_app(cfg, Detector(tiny_model, **DEFAULTS))) as url:
        assert detect(url, jpeg, {"prompt": "a cat"}).status_code == 401
        assert detect(url, jpeg, {"prompt": "a cat"}, headers={"X-API-Key": "s3cre"}).status_code == 401
        assert detect(url, jpeg, {"prompt": "a cat"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert detect(url, jpeg, {"prompt": "a cat"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.post(url + "/", json={}).status_code == 401
        assert httpx.get(url + "/metrics").status_code == 401
        for open_path in ("/healthz", "/readyz", "/", "/static/app.js", "/v1/info"):
            assert httpx.get(url + open_path).status_code == 200, open_path
        origin = {"Origin": "https://app.example"}
        assert "access-control-allow-origin" not in httpx.get(url + "/healthz", headers=origin).headers
    cfg = ServeConfig(cors_origins=("https://app.example",), warmup=False)
    with running(create_app(cfg, Detector(tiny_model, **DEFAULTS))) as url:
        r = httpx.get(url + "/healthz", headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert (
            "access-control-allow-origin"
            not in httpx.get(url + "/healthz", headers={"Origin": "https://x.org"}).headers
        )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a subprocess start (torch import, model load): ~40 s on the shared 2-core machine
def test_sigterm_drains_requests_in_flight(tiny_checkpoint, jpeg):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "gdino",
        "serve",
        "--weights",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--port",
        str(port),
        "--image-size",
        "800",
        "--max-batch",
        "1",
        "--no-warmup",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(detect, url, jpeg, {"prompt": p}) for p in ("a cat", "a dog", "a bird")]
            while "gdino_requests_in_flight 3.0" not in httpx.get(url + "/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        assert statuses == [200, 200, 200]
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its shutdown
        assert "Finished server process" in proc.stdout.read()
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--weights", "/nonexistent/model.safetensors"], "model.safetensors"),
        (["--max-batch", "0"], "max-batch must be a positive integer"),
        (["--box-threshold", "1.5"], "box-threshold"),
        (["--segmenter", "no-such-sam"], "no-such-sam"),
    ],
)
def test_cli_bad_settings_are_one_line_errors(argv, words, capsys, tiny_checkpoint):
    from gdino.cli import main

    base = ["serve", "--device", "cpu", "--port", "1"]
    if "--weights" not in argv:
        base += ["--weights", str(tiny_checkpoint)]
    assert main([*base, *argv]) == 2  # before any server starts (port 1 would fail to bind)
    err = capsys.readouterr().err.strip()
    assert err.startswith("gdino serve: error:") and words in err and "\n" not in err
