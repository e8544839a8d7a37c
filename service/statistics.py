"""Triton's statistics extension: per model version counts and cumulative nanoseconds, for the whole server.

Each worker process keeps its counters in a small file of int64s per model version, mapped into memory, under
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

FIELDS = ("success_count", "success_ns", "fail_count", "fail_ns", "queue_count", "queue_ns",
          "compute_input_count", "compute_input_ns", "compute_infer_count", "compute_infer_ns",
          "compute_output_count", "compute_output_ns", "inference_count", "execution_count", "last_inference")
INDEX = {name: i for i, name in enumerate(FIELDS)}
SIZE = 8 * len(FIELDS)
PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class ModelStats:
    """One worker's counters of one model version."""

    def __init__(self, buffer):
        self._buffer = buffer  # keeps the mapping alive
        self._values = memoryview(buffer).cast("q")
        self._lock = threading.Lock()

    def success(self, total_ns: int, input_ns: int, queue_ns: int, infer_ns: int, output_ns: int) -> None:
        """A request answered: Triton counts it once in success, queue and each compute phase."""
        v = self._values
        with self._lock:
            v[0] += 1
            v[1] += total_ns
            v[4] += 1
            v[5] += queue_ns
            v[6] += 1
            v[7] += input_ns
            v[8] += 1
            v[9] += infer_ns
            v[10] += 1
            v[11] += output_ns
            v[14] = time.time_ns() // 1_000_000

    def failure(self, total_ns: int) -> None:
        v = self._values
        with self._lock:
            v[2] += 1
            v[3] += total_ns
            v[14] = time.time_ns() // 1_000_000

    def execution(self, samples: int) -> None:
        """One ONNX Runtime run of `samples` samples (several requests when batched)."""
        v = self._values
        with self._lock:
            v[12] += samples
            v[13] += 1


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
        """The server's counters of one model version, summed over every worker."""
        total = np.zeros(len(FIELDS), dtype=np.int64)
        if self.folder is None:
            stats = self._own.get((name, version))
            if stats is not None:
                total += np.frombuffer(bytes(stats._buffer), dtype=np.int64)
            return total
        for path in self.folder.glob(f"*/{name}/{version}"):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if len(data) == SIZE:
                values = np.frombuffer(data, dtype=np.int64)
                total[:14] += values[:14]
                total[14] = max(total[14], values[14])
        return total

    def model_stats(self, name: str, version: str) -> dict:
        """One entry of the statistics extension's `model_stats`, in Triton's JSON."""
        t = {field: int(value) for field, value in zip(FIELDS, self.totals(name, version))}
        return {
            "name": name, "version": version, "last_inference": t["last_inference"],
            "inference_count": t["inference_count"], "execution_count": t["execution_count"],
            "inference_stats": {
                **{phase: {"count": t[f"{phase}_count"], "ns": t[f"{phase}_ns"]} for phase in PHASES},
                "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
            "response_stats": {}, "batch_stats": [], "memory_usage": [],
        }
