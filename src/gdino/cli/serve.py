"""``gdino serve``: the HTTP service (:mod:`gdino.serve`) on uvicorn."""

from __future__ import annotations

import argparse
import logging
import os

from gdino.cli.options import add_model_options, detect_options, load_detector, weights_name
from gdino.cli.segment import add_segmenter_options, build_segmenter_from
from gdino.errors import GdinoError
from gdino.segment.names import canonical_name

logger = logging.getLogger("gdino.cli")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` sub-command."""
    p = subparsers.add_parser(
        "serve",
        help="serve detection (and segmentation) over HTTP with server-side batching and a web page",
        description="Start an HTTP service: POST /v1/detect, /v1/segment, the Hugging Face "
        "zero-shot-object-detection task at POST /, /healthz, /readyz, /metrics, OpenAPI docs at /docs "
        "and a web page at /. Concurrent requests share forward passes (--max-batch, --max-wait-ms). "
        "Binds 127.0.0.1 unless --host says otherwise. See docs/serve.md.",
    )
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--dtype", help="fp32 (default), fp16 or bf16")
    p.add_argument(
        "--image-size", type=int, metavar="N", help="default shorter side of the resized image (default 800)"
    )
    p.add_argument("--box-threshold", type=float, help="default box threshold (default 0.35)")
    p.add_argument("--text-threshold", type=float, help="default text threshold (default 0.25)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        metavar="N",
        help="requests per forward pass at most (default 8; 1: no batching)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        metavar="T",
        help="wait at most T ms for a batch to fill after its first request (default 10)",
    )
    p.add_argument(
        "--queue-size", type=int, default=64, metavar="N", help="requests that may wait; more get 429 (default 64)"
    )
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="answer 504 after S seconds (default 30)")
    p.add_argument("--max-body-mb", type=float, default=20.0, metavar="MB", help="largest request body (default 20 MB)")
    p.add_argument("--max-pixels", type=int, metavar="N", help="largest image in pixels (default 16384 x 16384)")
    p.add_argument("--max-classes", type=int, default=256, metavar="N", help="longest class list (default 256)")
    p.add_argument(
        "--max-prompt-tokens", type=int, default=1024, metavar="N", help="longest prompt in tokens (default 1024)"
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key (Authorization: Bearer KEY or X-API-Key); default: $GDINO_API_KEY, else none",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow this origin to call the API from a browser (repeatable; default: CORS off)",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up forward at start-up")
    add_segmenter_options(p, None)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:  # lazy: keeps gdino --help fast, and the [serve] extra optional
        import uvicorn

        from gdino.serve import ServeConfig, create_app
    except ImportError as e:
        raise GdinoError(
            f"gdino serve needs the [serve] extra ({e.name} is missing): pip install 'gdino[serve]'"
        ) from None

    if args.segmenter:
        canonical_name(args.segmenter)  # unknown name: fail before loading anything
    fixed = {"max_pixels": args.max_pixels} if args.max_pixels else {}
    options = detect_options(args, **fixed)
    api_key = args.api_key if args.api_key is not None else (os.environ.get("GDINO_API_KEY") or None)
    config = ServeConfig(
        weights=weights_name(args),
        device=args.device,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_pixels=options.max_pixels or ServeConfig.max_pixels,
        max_classes=args.max_classes,
        max_prompt_tokens=args.max_prompt_tokens,
        api_key=api_key,
        cors_origins=tuple(args.cors_origin),
        warmup=not args.no_warmup,
    )
    if args.host not in LOOPBACK and api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach this port can use it", args.host)
    detector = load_detector(args, options)  # bad weights or device: one-line error before the server starts
    segmenter = build_segmenter_from(args, detector.device) if args.segmenter else None
    app = create_app(config, detector, segmenter)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=int(config.timeout_s) + 1,
        log_level="debug" if args.verbose else "info",
    )
    return 0
