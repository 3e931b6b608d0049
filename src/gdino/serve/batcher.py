"""Dynamic batching: requests wait in a bounded queue; one worker collects up to ``max_batch`` of
them (waiting at most ``max_wait_ms`` after the first) and runs them in one thread that owns the
model, one forward per group of equal image size and precision (:mod:`gdino.serve.forward`).

Full queue: 429 with ``Retry-After``. A request still queued at its deadline is dropped, not run
(504). Closing stops intake (503) and lets queued and running requests finish.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gdino.core.detections import Detections
from gdino.infer.detector import Detector
from gdino.serve.config import ServeConfig
from gdino.serve.forward import Item, detect_mixed, forward_key
from gdino.serve.metrics import Metrics
from gdino.serve.problems import Problem

logger = logging.getLogger("gdino.serve")


@dataclass
class Job:
    item: Item
    segment: bool
    deadline: float  # time.monotonic()
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Queue + worker; :meth:`submit` is awaited by the routes."""

    def __init__(self, detector: Detector, config: ServeConfig, metrics: Metrics, segmenter: Any = None) -> None:
        self.detector = detector
        self.config = config
        self.metrics = metrics
        self.segmenter = segmenter
        #: forwards by batch size (requests per forward), for tests and logs
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        #: runs one list of jobs in the model thread (tests may wrap it)
        self.run_batch: Callable[[list[Job]], list[Detections | BaseException]] = self._run_jobs
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gdino-model")
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._pending_get: asyncio.Task | None = None
        self._busy = False
        self._closing = False
        self._forward_ema = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._queue = asyncio.Queue(self.config.queue_size)
        self._task = asyncio.create_task(self._loop(), name="gdino-batcher")

    async def close(self, timeout_s: float = 60.0) -> None:
        """Refuse new requests, finish queued and running ones (at most ``timeout_s``), stop."""
        self._closing = True
        end = time.monotonic() + timeout_s
        while (self.depth or self._busy) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        for task in (self._task, self._pending_get):
            if task is not None:
                task.cancel()
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        """Requests waiting (the one a pending queue read already took included)."""
        if self._queue is None:
            return 0
        taken = self._pending_get is not None and self._pending_get.done()
        return self._queue.qsize() + int(taken)

    def in_model_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``fn`` in the model's thread (warm-up, work that must not race the batches)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ intake
    async def submit(self, item: Item, segment: bool = False) -> Detections:
        if self._queue is None or self._closing:
            raise Problem(503, "the server is not accepting requests (starting or shutting down)")
        loop = asyncio.get_running_loop()
        job = Job(item, segment, time.monotonic() + self.config.timeout_s, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Problem(
                429,
                f"too many requests: {self.config.queue_size} are already waiting; retry later",
                {"Retry-After": str(self.retry_after())},
            ) from None
        self.metrics.queue_depth.set(self.depth)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.config.timeout_s)
        except asyncio.TimeoutError:
            raise Problem(504, f"no result within the server's deadline of {self.config.timeout_s:g} s") from None

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        batches = math.ceil(max(self.depth, 1) / self.config.max_batch)
        return max(1, math.ceil(batches * (self._forward_ema or 1.0)))

    # ------------------------------------------------------------------ worker
    async def _next(self, timeout: float | None) -> Job | None:
        assert self._queue is not None
        if self._pending_get is None:
            self._pending_get = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({self._pending_get}, timeout=timeout)
        if not done:
            return None  # keep the pending get: no job is lost to a cancelled wait
        job = self._pending_get.result()
        self._pending_get = None
        return job

    async def _collect(self) -> list[Job]:
        assert self._queue is not None
        first = await self._next(None)
        assert first is not None
        batch = [first]
        end = time.monotonic() + self.config.max_wait_ms / 1000
        while len(batch) < self.config.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            job = await self._next(remaining)
            if job is None:
                break
            batch.append(job)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._busy = True
            try:
                self.metrics.queue_depth.set(self.depth)
                now = time.monotonic()
                live = []
                for job in batch:
                    if job.future.done():
                        continue
                    if job.deadline <= now:  # waited past its deadline: not worth a forward
                        fail(job.future, Problem(504, "request expired in the queue"))
                    else:
                        live.append(job)
                if not live:
                    continue
                start = time.monotonic()
                try:
                    results = await loop.run_in_executor(self._executor, self.run_batch, live)
                except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                    logger.exception("batch failed")
                    results = [e] * len(live)
                took = time.monotonic() - start
                self._forward_ema = took if not self._forward_ema else 0.8 * self._forward_ema + 0.2 * took
                for job, res in zip(live, results):
                    if job.future.done():
                        continue
                    if isinstance(res, BaseException):
                        fail(job.future, res)
                    else:
                        job.future.set_result(res)
            finally:
                self._busy = False

    def _run_jobs(self, jobs: list[Job]) -> list[Detections | BaseException]:
        """In the model thread: one forward per group of equal :func:`forward_key`, then masks."""
        out: list[Detections | BaseException] = [RuntimeError("not run")] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(forward_key(job.item), []).append(i)
        for idx in groups.values():
            start = time.monotonic()
            try:
                dets = detect_mixed(self.detector, [jobs[i].item for i in idx])
                for i, d in zip(idx, dets):
                    if jobs[i].segment and self.segmenter is not None:
                        d = self.segmenter.segment(np.asarray(jobs[i].item.prepared.loaded.image), d)
                    out[i] = d
            except Exception as e:  # noqa: BLE001 - reported to the group's requests
                logger.exception("forward of %d requests failed", len(idx))
                for i in idx:
                    out[i] = e
            self.batch_sizes[len(idx)] += 1
            self.metrics.batch_size.observe(len(idx))
            self.metrics.forward_seconds.observe(time.monotonic() - start)
        return out


def fail(future: asyncio.Future, error: BaseException) -> None:
    """Set ``error`` on ``future``, marked as seen: its waiter may have timed out already (504)."""
    future.set_exception(error)
    future.exception()
