"""Helpers for the service tests: run an app on a free loopback port in a thread (a real uvicorn
server, real sockets), wait until /readyz says ready, stop it afterwards; hold the model thread so
that requests queue up into one batch; compare detections of two JSON documents."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


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
