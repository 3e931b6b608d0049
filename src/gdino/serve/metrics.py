"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """``gdino_requests_total{route,status}``, ``gdino_request_seconds{route}``,
    ``gdino_batch_size``, ``gdino_queue_depth``, ``gdino_forward_seconds``, ``gdino_requests_in_flight``."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gdino_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "gdino_request_seconds",
            "request latency (seconds)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "gdino_batch_size",
            "requests per forward pass",
            buckets=tuple(range(1, max_batch + 1)),
            registry=self.registry,
        )
        self.forward_seconds = Histogram(
            "gdino_forward_seconds",
            "seconds per batch (forward and decoding)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("gdino_queue_depth", "requests waiting for the model", registry=self.registry)
        self.in_flight = Gauge(
            "gdino_requests_in_flight", "requests being answered (/metrics excluded)", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
