"""Model control shared by the worker processes of one server.

A load or unload call reaches one worker. It records the change in `control.json` (a generation number and
the models unloaded on request) in a folder all workers share; every worker watches that file, reconciles
its own sessions with it, and writes the generation it has applied to `ack-<pid>`. The worker that took the
call waits until every live worker has acknowledged, so when the call returns, all of them serve the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Iterator

from service.artifact import write_file_atomically

CONTROL_FILE = "control.json"
ACK_PREFIX = "ack-"


class Control:
    """The shared control state in `folder`; None of it exists for a single in-process app."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / CONTROL_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / "control.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {"generation": 0, "unloaded": []}

    def change(self, name: str, unloaded: bool) -> dict:
        """Record a load (unloaded=False) or unload of `name`; return the whole new state."""
        with self._locked():
            state = self.read()
            names = set(state["unloaded"])
            (names.add if unloaded else names.discard)(name)
            state = {"generation": state["generation"] + 1, "unloaded": sorted(names)}
            write_file_atomically(self.path, json.dumps(state).encode())
        return state

    def acknowledge(self, generation: int, pid: int | None = None) -> None:
        write_file_atomically(self.folder / f"{ACK_PREFIX}{pid or os.getpid()}", str(generation).encode())

    def forget(self, pid: int) -> None:
        """Drop the acknowledgement of a worker that exited."""
        (self.folder / f"{ACK_PREFIX}{pid}").unlink(missing_ok=True)

    def wait_for(self, generation: int, timeout: float) -> list[int]:
        """Wait until every live worker has applied `generation`; return the pids that had not (empty: all)."""
        deadline = time.monotonic() + timeout
        while True:
            behind = []
            for ack in self.folder.glob(f"{ACK_PREFIX}*"):
                pid = int(ack.name[len(ACK_PREFIX):])
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue  # a worker that died; gunicorn replaces it and the new one loads everything
                try:
                    applied = int(ack.read_text() or 0)
                except (FileNotFoundError, ValueError):
                    applied = 0
                if applied < generation:
                    behind.append(pid)
            if not behind or time.monotonic() >= deadline:
                return behind
            time.sleep(0.05)
