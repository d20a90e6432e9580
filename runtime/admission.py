"""Admission control for `replyrank serve`: what a request must pass before it may use the model.

- the body's size: `BodyLimit` answers 413 before anything parses a body over the cap, chunked
  bodies included, so a client cannot make the server buffer what it will refuse anyway;
- a bounded queue: `Admission` lets at most `concurrency` requests run in its thread pool and
  `queue` wait; the next one gets 429 with `Retry-After` instead of a queue that grows until memory
  runs out (text-embeddings-inference and llama.cpp's server answer the same way);
- a deadline, `timeout_s` from arrival, queueing included: a request that waited past it gets 504
  without running, and one that runs past it has its decode stopped between steps
  (`replyrank.options.deadline`), which frees its thread, and gets 504 too.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import options
from .api import ApiError, error_body
from .errors import DeadlineExceeded

T = TypeVar("T")


class Admission:
    """Bounded admission in front of a thread pool: `running + waiting <= concurrency + queue`.

    Admission is counted on the event loop's thread only, so a plain int needs no lock.
    """

    def __init__(self, concurrency: int, queue: int, timeout_s: float):
        self.concurrency, self.capacity, self.timeout_s = concurrency, concurrency + queue, timeout_s
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="replyrank-serve")
        self.admitted = 0  # requests running or waiting for a thread
        self.mean_s = 1.0  # moving average of a request's service time, for Retry-After

    def retry_after(self) -> int:
        # about how long until the requests ahead are through the pool
        return max(1, math.ceil(self.mean_s * self.admitted / self.concurrency))

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` on a pool thread under this request's deadline: 429 when full, 504 past the deadline."""
        deadline = time.monotonic() + self.timeout_s
        if self.admitted >= self.capacity:
            retry = self.retry_after()
            raise ApiError(429, "overloaded", f"the server is busy ({self.admitted} requests in progress or queued); retry in {retry} s",
                           {"Retry-After": str(retry)})
        self.admitted += 1
        try:
            started = time.perf_counter()
            result = await asyncio.get_running_loop().run_in_executor(self.pool, self._before, deadline, work)
            self.mean_s = 0.8 * self.mean_s + 0.2 * (time.perf_counter() - started)
            return result
        except DeadlineExceeded as error:
            message = f"the request ran past its {self.timeout_s:g} s deadline ({error}); ask for fewer candidates or tokens"
            raise ApiError(504, "timeout", message) from None
        finally:
            self.admitted -= 1

    def _before(self, deadline: float, work: Callable[[], T]) -> T:
        if time.monotonic() > deadline:
            raise ApiError(504, "timeout", f"the request waited in the queue past its {self.timeout_s:g} s deadline; retry later")
        with options.deadline(deadline):
            return work()

    def shutdown(self) -> None:
        """Wait for the requests in the pool, then stop its threads."""
        self.pool.shutdown(wait=True)


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` with 413 before anything parses it."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(send)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable) -> None:
        message = f"the request body may be at most {self.max_bytes} bytes"
        body = json.dumps(error_body("payload_too_large", message), separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
