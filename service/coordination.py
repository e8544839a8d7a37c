"""Keeping the worker processes of one server in step: load/unload calls over the shared control state
(service/control.py), and the watcher thread that follows it and, with polling on, the repository."""

from __future__ import annotations

import logging
import threading
import time

from service.control import Control
from service.reconcile import Reconciler
from service.settings import Settings

log = logging.getLogger(__name__)
CONTROL_CHECK_SECONDS = 0.2  # how often a worker looks at the shared control file (one stat call)


class Coordinator:
    """This worker's side of the generation protocol, and its watcher thread; `control` is None for a single
    in-process app, which then only polls the repository (when polling is on)."""

    def __init__(self, settings: Settings, repository: Reconciler, control: Control | None = None):
        self.settings = settings
        self.repository = repository
        self.control = control
        self.generation = 0  # the last generation of the shared state this worker applied
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def join(self) -> None:
        """Before the first load: take in the changes already made (the models unloaded on request), and be known
        to the others as having applied nothing yet, so that a load/unload call made while this worker is still
        loading waits for it instead of returning before it serves the change."""
        if self.control is None:
            return
        self.control.acknowledge(0)
        state = self.control.read()
        self.repository.unloaded, self.generation = set(state["unloaded"]), state["generation"]

    def acknowledge(self) -> None:
        """After the first load: this worker is in step with the others."""
        if self.control is not None:
            self.control.acknowledge(self.generation)

    def publish(self, name: str, unloaded: bool) -> None:
        """Record a load/unload for every worker, apply what other workers recorded meanwhile, then wait."""
        if self.control is None:
            return
        state = self.control.change(name, unloaded)
        self._apply(state)
        behind = self.control.wait_for(self.generation, self.settings.startup_wait_seconds)
        if behind:
            log.warning("workers %s had not applied the change to %s after %s s", behind, name,
                        self.settings.startup_wait_seconds)

    def _apply(self, state: dict) -> None:
        """Take in the shared state: the unloaded set, and a fresh look at every model (a load call elsewhere
        may have been for a new version); acknowledge only once all of it is applied."""
        with self.repository.reload_lock:
            if state["generation"] <= self.generation:
                return
            self.repository.unloaded = set(state["unloaded"])
            self.repository.reconcile_all(retry_failed=True)
            self.generation = state["generation"]
            self.control.acknowledge(self.generation)

    def apply_control(self) -> bool:
        """Take in load/unload calls made on other workers; True when the shared state moved on."""
        if self.control is None:
            return False
        state = self.control.read()
        if state["generation"] <= self.generation:
            return False
        self._apply(state)
        return True

    def watch(self) -> None:
        """Background loop: follow the shared control file and, if polling is on, the repository."""
        poll = self.settings.poll_seconds
        last_poll = time.monotonic()
        while not self._stop.wait(CONTROL_CHECK_SECONDS):
            now = time.monotonic()
            try:
                self.apply_control()
                if poll > 0 and now - last_poll >= poll:
                    last_poll = now
                    self.repository.reconcile_all()
            except Exception:  # the watcher must outlive any one scan; the next one may succeed
                log.exception("repository watch failed")

    def start(self) -> None:
        """Start the watcher when there is something to watch (other workers, or a repository to poll)."""
        if self.control is not None or self.settings.poll_seconds > 0:
            self._watcher = threading.Thread(target=self.watch, name="repository-watcher", daemon=True)
            self._watcher.start()

    def stop(self, timeout: float = 5) -> None:
        """Stop the watcher, letting a scan in progress finish (for up to `timeout` seconds)."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout)
