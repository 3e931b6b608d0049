"""``create_app``: the FastAPI application — lifespan (load + warm-up in the background, drain
on shutdown), the middleware (request-size cap, API key, metrics, optional CORS), the JSON error
handlers and the routes of :mod:`gdino.serve.routes`."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gdino.errors import GdinoError, first_line
from gdino.serve.config import ServeConfig
from gdino.serve.problems import Problem, problem_body
from gdino.serve.routes import STATIC, router, validation_problem
from gdino.serve.service import Service

logger = logging.getLogger("gdino.serve")

#: paths served without the API key (probes, the page and its assets, the API docs)
OPEN_PATHS = ("/healthz", "/readyz", "/v1/info", "/docs", "/openapi.json", "/static/")


def create_app(config: ServeConfig | None = None, detector: Any = None, segmenter: Any = None) -> FastAPI:
    """The service app. ``detector``: an already loaded :class:`gdino.Detector` (else
    ``config.weights`` is loaded at start-up); ``segmenter``: enables ``/v1/segment``."""
    config = config or ServeConfig()
    service = Service(config, detector, segmenter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(service.start(), name="gdino-start")
        yield
        await starting
        await service.stop()  # uvicorn has already waited for the open requests

    app = FastAPI(
        title="gdino",
        lifespan=lifespan,
        description="Grounding DINO detection and Grounded-SAM segmentation over HTTP, with server-side batching.",
    )
    app.state.service = service
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse(problem_body(exc.status, exc.message), exc.status, headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def on_request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(exc)

    @app.exception_handler(ValidationError)
    async def on_validation(request: Request, exc: ValidationError) -> JSONResponse:
        return validation_problem(exc)

    @app.exception_handler(GdinoError)
    async def on_gdino_error(request: Request, exc: GdinoError) -> JSONResponse:
        return JSONResponse(problem_body(400, first_line(exc)), 400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            problem_body(exc.status_code, str(exc.detail)), exc.status_code, headers=dict(exc.headers or {})
        )

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed: %s", request.method, request.url.path, first_line(exc))
        return JSONResponse(problem_body(500, f"internal error: {first_line(exc)}"), 500)

    app.add_middleware(Guard, service=service)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    return app


def needs_key(request: Request) -> bool:
    path = request.url.path
    if request.method == "GET" and path == "/":
        return False  # the page itself; its API calls carry the key
    return not any(path == p or (p.endswith("/") and path.startswith(p)) for p in OPEN_PATHS)


def key_matches(request: Request, key: str) -> bool:
    """Constant-time comparison of the ``Authorization: Bearer`` or ``X-API-Key`` header with ``key``."""
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest((given or "").encode(), key.encode())


class Guard:
    """The API key check (401) and the request metrics, as plain ASGI middleware (errors raised
    while the body is read reach the app's handlers unchanged)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        key = self.service.config.api_key
        request = Request(scope)
        counted = scope["path"] != "/metrics"
        if counted:
            self.service.metrics.in_flight.inc()
        try:
            if key is not None and needs_key(request) and not key_matches(request, key):
                refusal = JSONResponse(
                    problem_body(
                        401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')"
                    ),
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await refusal(scope, receive, tracking)
            else:
                await self.app(scope, receive, tracking)
        finally:
            if counted:
                self.service.metrics.in_flight.dec()
            label = getattr(scope.get("route"), "path", "unmatched")
            self.service.metrics.requests.labels(label, str(status)).inc()
            self.service.metrics.latency.labels(label).observe(time.perf_counter() - start)


class BodyLimit:
    """413 for bodies over ``max_bytes``: by ``Content-Length`` before reading, and while
    reading (chunked uploads), so an oversized body is never buffered whole.

    Before the 413 goes out, up to another ``max_bytes`` of the rest of the body is read and
    dropped: a client still uploading when the server answers and closes would otherwise often
    see a reset connection instead of the JSON error (larger bodies are refused at once)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= 2 * self.max_bytes:
                await self._drain(receive)
            await self._refuse(send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive)
                    raise Problem(413, self.message)
            return message

        await self.app(scope, limited, send)

    @property
    def message(self) -> str:
        return f"request body over the limit of {self.max_bytes:,} bytes"

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the rest of the request body, at most ``max_bytes`` of it."""
        dropped = 0
        while dropped <= self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(problem_body(413, self.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
