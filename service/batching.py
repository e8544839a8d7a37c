"""Dynamic batching per model version, with Triton's semantics.

Concurrent requests for one model version are merged into one ONNX Runtime run. Configured per model by the
`dynamic_batching { ... }` block of its Triton `config.pbtxt` (what `python -m training export` writes):

    dynamic_batching {
      max_queue_delay_microseconds: 0      # default 0: when the session is free, run whatever is queued now
      preferred_batch_size: [ 16, 32 ]     # with a delay: stop waiting once a preferred size is reached
      default_queue_policy { max_queue_size: 64 }   # requests waiting beyond this get 503 (0 = unbounded)
    }

A model without the block is not batched (as in Triton). The batch never exceeds the model's max_batch_size.

How it runs, with no thread of its own: a request that finds the session idle (and no queue delay to wait)
runs at once on its own thread, without queueing. Otherwise its thread puts it in the queue; if no thread is
running the session, it becomes the runner, takes the queued requests that can be stacked with the first one
(the same inputs' trailing shapes and requested outputs) up to max_batch_size samples, runs them as one batch,
wakes each of their threads with its rows, and goes on while its own request is still queued; then it wakes the
oldest waiting request to take over. So at low load a request runs at once on its own thread (no hand-off, no
added latency), and under load the requests that arrived during a run go together in the next. Each wake-up
is one lock release aimed at one thread (no broadcast). A batch's outputs reach each request as views (slices
of the batch's arrays), not copies.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from service.errors import ServiceError


BESIDE_BELOW_SECONDS = 100e-6
"""A request that finds the session busy runs beside it (ONNX Runtime runs concurrent calls on one session) rather
than waiting to be batched when a lone run takes less than this: waiting and being woken cost a thread about as
much CPU as such a run, so merging cannot pay (docs/performance.md, "Dynamic batching")."""


class QueueFull(ServiceError):
    status_code = 503


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0  # 0: unbounded

    def describe(self) -> dict:
        return {"max_batch_size": self.max_batch_size, "max_queue_delay_microseconds": self.max_queue_delay_us,
                "preferred_batch_size": list(self.preferred_batch_sizes), "max_queue_size": self.max_queue_size}


def batching_config(block: dict, max_batch_size: int) -> BatchingConfig:
    """The batcher's settings from a parsed dynamic_batching block (service.modelconfig)."""
    preferred = block.get("preferred_batch_size") or []
    return BatchingConfig(max_batch_size=max_batch_size,
                          max_queue_delay_us=block.get("max_queue_delay_microseconds", 0),
                          preferred_batch_sizes=tuple(sorted({p for p in preferred if 0 < p <= max_batch_size})),
                          max_queue_size=block.get("default_queue_policy", {}).get("max_queue_size", 0))


class _Request:
    __slots__ = ("feed", "outputs", "key", "rows", "done", "result", "error", "started", "signal")

    def __init__(self, feed: dict[str, np.ndarray], outputs: tuple[str, ...], key: tuple, rows: int):
        self.feed, self.outputs, self.key, self.rows = feed, outputs, key, rows
        self.done, self.result, self.error, self.started = False, None, None, 0.0
        self.signal = threading.Lock()  # held while the request waits; released when done or made the runner
        self.signal.acquire()


class Batcher:
    """The queue of one model version. `run(model, feed, outputs)` returns that request's outputs."""

    def __init__(self, config: BatchingConfig, observe: Callable[[int, float], None]):
        self.config = config
        self.observe = observe  # called with (samples, seconds) after each run: the batch-size histogram
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # used only with a queue delay
        self._queue: deque[_Request] = deque()
        self._running = False
        self.run_seconds = math.inf  # the quickest lone run so far; until one ran, requests that find it busy queue

    def run(self, model, feed: dict[str, np.ndarray], outputs: list[str]) -> tuple[dict, float]:
        """(this request's outputs, perf_counter() when its batch started to run)."""
        with self._lock:
            if self.config.max_queue_delay_us:  # wait for company, as configured
                side = lone = False
            else:  # the session is idle: run at once; busy with a run too short to be worth waiting for: run beside
                lone = not self._running
                side = not lone and self.run_seconds < BESIDE_BELOW_SECONDS
                self._running = True
        if lone or side:
            return self._run_alone(model, feed, outputs, lone)
        key = (tuple(outputs), tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(feed.items())))
        request = _Request(feed, tuple(outputs), key, next(iter(feed.values())).shape[0])
        with self._lock:
            if self.config.max_queue_size and len(self._queue) >= self.config.max_queue_size:
                raise QueueFull(f"model '{model.name}' version {model.version}: the batching queue is full "
                                f"({self.config.max_queue_size} requests waiting); retry later")
            self._queue.append(request)
            wait = self._running
            self._running = True
            if self.config.max_queue_delay_us:
                self._arrived.notify()  # a runner waiting for more requests counts this one
        if wait:
            request.signal.acquire()  # released by the runner: with the result, or to make this one the runner
            if request.done:
                return self._outcome(request)
        try:
            while not request.done:
                self._execute(model, self._take(), request)
        finally:
            with self._lock:  # hand over to the oldest waiting request, or stop
                if self._queue:
                    self._queue[0].signal.release()
                else:
                    self._running = False
        return self._outcome(request)

    def _run_alone(self, model, feed: dict[str, np.ndarray], outputs: list[str], runner: bool) -> tuple[dict, float]:
        """Run one request at once; `runner`: this thread holds the session's runner role, to hand over after."""
        try:
            started = time.perf_counter()
            values = model.run(feed, outputs)
            seconds = time.perf_counter() - started
            if seconds < self.run_seconds:  # the quickest lone run: what a run costs without preemption
                self.run_seconds = seconds
            self.observe(next(iter(feed.values())).shape[0], seconds)
            return values, started
        finally:
            if runner:
                with self._lock:  # requests that arrived meanwhile queued: the oldest takes over
                    if self._queue:
                        self._queue[0].signal.release()
                    else:
                        self._running = False

    @staticmethod
    def _outcome(request: _Request) -> tuple[dict, float]:
        if request.error is not None:
            raise request.error
        return request.result, request.started

    def _take(self) -> list[_Request]:
        """Take the next batch: the first queued request and those that stack with it, after the queue delay."""
        config = self.config
        with self._lock:
            if config.max_queue_delay_us:
                deadline = time.perf_counter() + config.max_queue_delay_us / 1e6
                target = config.preferred_batch_sizes[-1] if config.preferred_batch_sizes else config.max_batch_size
                while True:
                    queued = self._stackable_rows()
                    left = deadline - time.perf_counter()
                    if queued >= target or queued in config.preferred_batch_sizes or left <= 0:
                        break
                    self._arrived.wait(left)
            first = self._queue[0]
            batch, rows, keep = [], 0, deque()
            while self._queue:
                item = self._queue.popleft()
                if item.key == first.key and rows + item.rows <= config.max_batch_size:
                    batch.append(item)
                    rows += item.rows
                else:
                    keep.append(item)
            self._queue = keep
        return batch

    def _stackable_rows(self) -> int:
        first = self._queue[0]
        return sum(item.rows for item in self._queue if item.key == first.key)

    def _execute(self, model, batch: list[_Request], runner: _Request) -> None:
        started = time.perf_counter()
        try:
            if len(batch) == 1:
                values = model.run(batch[0].feed, list(batch[0].outputs))
                parts = [values]
            else:
                feed = {name: np.concatenate([item.feed[name] for item in batch]) for name in batch[0].feed}
                values = model.run(feed, list(batch[0].outputs))
                parts, offset = [], 0
                for item in batch:
                    parts.append({name: value[offset:offset + item.rows] for name, value in values.items()})
                    offset += item.rows
            errors = [None] * len(batch)
        except BaseException as exc:  # every request of the batch gets the error (InferenceFailed: a 500)
            parts, errors = [None] * len(batch), [exc] * len(batch)
        seconds = time.perf_counter() - started
        for item, part, error in zip(batch, parts, errors):
            item.result, item.error, item.started = part, error, started
            item.done = True
        for item in batch:
            if item is not runner:  # every other request of the batch is waiting on its signal
                item.signal.release()
        self.observe(sum(item.rows for item in batch), seconds)
