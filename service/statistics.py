"""Triton's statistics extension: per model version counts and cumulative nanoseconds, for the whole server.

Each worker process keeps its counters in a small file of float64s per model version, mapped into memory, under
`<state_dir>/stats/<pid>/<model>/<version>`; a request adds to them under a lock (well under a microsecond). The
worker that answers `GET /v2/models/stats` sums every worker's file, so the figures are the server's, whichever
worker is asked, and they stay after a worker exits (as Prometheus counters do). Without a state folder (one
process) the counters live in memory.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path

import numpy as np

# One worker's counters of one model version: float64s (counts are exact to 2**53, seconds to well under a ns for
# a century of compute). Every success is counted once in each phase, as Triton counts it.
SUCCESS, SUCCESS_S, FAIL, FAIL_S, QUEUE_S, INPUT_S, INFER_S, OUTPUT_S, INFERENCES, EXECUTIONS, LAST = range(11)
SIZE = 8 * 11
PHASES = {"queue": QUEUE_S, "compute_input": INPUT_S, "compute_infer": INFER_S, "compute_output": OUTPUT_S}


class ModelStats:
    """One worker's counters of one model version."""

    def __init__(self, buffer):
        self._buffer = buffer  # keeps the mapping alive
        self._values = memoryview(buffer).cast("d")
        self._lock = threading.Lock()

    def success(self, start: float, decoded: float, started: float, ran: float, encoded: float, end: float,
                samples: int = 0) -> None:
        """A request answered, from perf_counter() readings: arrival, request checked, run started, run done,
        answer encoded, end. Triton's phases: compute_input, queue, compute_infer, compute_output. `samples`: the
        batch of the request's own run, when it ran alone (a batcher counts its runs with `execution`)."""
        v = self._values
        with self._lock:  # literal indices: this runs on every request (the names are at the top)
            if samples:
                v[8] += samples  # INFERENCES
                v[9] += 1  # EXECUTIONS
            v[0] += 1  # SUCCESS
            v[1] += end - start  # SUCCESS_S
            v[5] += decoded - start  # INPUT_S
            v[4] += started - decoded  # QUEUE_S
            v[6] += ran - started  # INFER_S
            v[7] += encoded - ran  # OUTPUT_S
            if end > v[10]:
                v[10] = end  # LAST: perf_counter(), the same clock in every process; wall time on reading

    def failure(self, start: float, end: float) -> None:
        v = self._values
        with self._lock:
            v[FAIL] += 1
            v[FAIL_S] += end - start
            if end > v[LAST]:
                v[LAST] = end

    def execution(self, samples: int) -> None:
        """One ONNX Runtime run of `samples` samples (several requests when batched)."""
        v = self._values
        with self._lock:
            v[8] += samples  # INFERENCES
            v[9] += 1  # EXECUTIONS


class Statistics:
    """The counters of this worker, and the sum over every worker that shares `folder`."""

    def __init__(self, folder: str | None):
        self.folder = Path(folder) / "stats" if folder else None
        self._own: dict[tuple[str, str], ModelStats] = {}
        self._lock = threading.Lock()

    def for_model(self, name: str, version: str) -> ModelStats:
        key = (name, version)
        stats = self._own.get(key)
        if stats is None:
            with self._lock:
                stats = self._own.get(key) or self._create(name, version)
                self._own[key] = stats
        return stats

    def _create(self, name: str, version: str) -> ModelStats:
        if self.folder is None:
            return ModelStats(bytearray(SIZE))
        path = self.folder / str(os.getpid()) / name / version
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            if os.fstat(fh.fileno()).st_size < SIZE:
                fh.truncate(SIZE)
            return ModelStats(mmap.mmap(fh.fileno(), SIZE))

    def totals(self, name: str, version: str) -> np.ndarray:
        """The server's counters of one model version, summed over every worker (the last inference: the latest)."""
        total = np.zeros(SIZE // 8)
        if self.folder is None:
            own = self._own.get((name, version))
            buffers = [bytes(own._buffer)] if own is not None else []
        else:
            buffers = []
            for path in self.folder.glob(f"*/{name}/{version}"):
                try:
                    buffers.append(path.read_bytes())
                except OSError:
                    continue
        for data in buffers:
            if len(data) == SIZE:
                values = np.frombuffer(data, dtype=np.float64)
                last = max(total[LAST], values[LAST])
                total += values
                total[LAST] = last
        return total

    def model_stats(self, name: str, version: str) -> dict:
        """One entry of the statistics extension's `model_stats`, in Triton's JSON."""
        t = self.totals(name, version)
        count = int(t[SUCCESS])

        def phase(n: int, index: int) -> dict:
            return {"count": n, "ns": int(round(t[index] * 1e9))}

        return {
            "name": name, "version": version,
            "last_inference": int((t[LAST] + time.time() - time.perf_counter()) * 1000) if t[LAST] else 0,
            "inference_count": int(t[INFERENCES]), "execution_count": int(t[EXECUTIONS]),
            "inference_stats": {
                "success": phase(count, SUCCESS_S), "fail": phase(int(t[FAIL]), FAIL_S),
                **{name: phase(count, index) for name, index in PHASES.items()},
                "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
            "response_stats": {}, "batch_stats": [], "memory_usage": [],
        }
