"""Helpers for the service tests: run an app on a free loopback port in a thread (a real uvicorn
server, real sockets), wait until /readyz says ready, stop it afterwards; hold the model thread so
that requests queue up into one batch; compare detections of two JSON documents."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
from PIL import Image


@contextmanager
def running(app, ready: bool = True, timeout_s: float = 120.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1:<free port>; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout_s
        while not server.started:
            if time.monotonic() > end or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        if ready:
            while (probe := httpx.get(url + "/readyz")).status_code != 200:
                if time.monotonic() > end or probe.json().get("state") == "failed":
                    raise RuntimeError(f"the test server did not become ready: {probe.text}")
                time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def gate(app):
    """Hold the model thread until the yielded ``release`` event is set (at the latest on exit);
    ``started`` is set when a batch reaches the model thread."""
    batcher = app.state.service.batcher
    release, started = threading.Event(), threading.Event()
    inner = batcher.run_batch

    def held(jobs):
        started.set()
        release.wait(60)
        return inner(jobs)

    batcher.run_batch = held
    try:
        yield release, started
    finally:
        release.set()
        batcher.run_batch = inner


def same_detections(a: list[dict], b: list[dict], score_tol: float = 2e-4, box_tol: float = 0.05) -> None:
    """Two ``detections`` lists of the JSON document agree (scores are rounded to 4 decimals and
    boxes to 2 in the JSON, so equal tensors up to float rounding agree within these tolerances)."""
    assert [d["label"] for d in a] == [d["label"] for d in b]
    assert [d.get("class_id") for d in a] == [d.get("class_id") for d in b]
    for x, y in zip(a, b):
        assert abs(x["score"] - y["score"]) <= score_tol, (x, y)
        assert max(abs(p - q) for p, q in zip(x["box"], y["box"])) <= box_tol, (x, y)


def queue_behind_gate(app, batcher, call: Callable, requests: Sequence) -> tuple:
    """``call(requests[0])`` occupies the model thread (held by :func:`gate`) while ``call(r)`` for
    every ``r`` in ``requests`` queues up behind it; then the gate opens, so the queued requests
    form one batch. Returns (the first call's result, the queued calls' results in order)."""
    with ThreadPoolExecutor(len(requests) + 1) as pool, gate(app) as (release, started):
        first = pool.submit(call, requests[0])
        assert started.wait(30)
        rest = [pool.submit(call, r) for r in requests]
        deadline = time.monotonic() + 30
        while batcher.depth < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.depth == len(requests)
        release.set()
        return first.result(), [f.result() for f in rest]


def three_photos(jpeg_path) -> list:
    """The cat photo, its mirror image and seeded noise of the same size (PIL RGB images)."""
    cat = Image.open(jpeg_path).convert("RGB")
    flipped = cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (cat.height, cat.width, 3), dtype=np.uint8))
    return [cat, flipped, noise]
