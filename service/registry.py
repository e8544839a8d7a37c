"""The registry of loaded model versions: the lookups every request makes, over the parts that keep it current.

`ModelRegistry` answers `get`, `versions`, `names`, `index`, `states` and readiness. Reconciling the repository
(discover, load, swap, refuse) is service/reconcile.py; keeping the worker processes in step (the generation
protocol, the watcher thread) is service/coordination.py.
"""

from __future__ import annotations

import threading

from service import artifact
from service.control import Control
from service.coordination import Coordinator
from service.errors import BadRequest, ModelNotFound, ModelNotReady
from service.metrics import Metrics
from service.reconcile import Reconciler, VersionState, release_free_memory
from service.runtime import LoadedModel
from service.settings import Settings


class ModelRegistry:
    """Loaded versions by model name, kept in step with the repository and the shared control state."""

    def __init__(self, settings: Settings, metrics: Metrics, control: Control | None = None):
        self.settings = settings
        self.repository = Reconciler(settings, metrics)
        self.workers = Coordinator(settings, self.repository, control)
        self._initial_load_done = threading.Event()

    # -- keeping it current --------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every model the policy selects; failures are recorded, never raised."""
        try:
            self.workers.join()  # a worker started after load/unload calls begins in step with them
            self.repository.reconcile_all()
            release_free_memory()  # loading read each model file whole: give the freed heap back to the system
        finally:
            self._initial_load_done.set()
            self.workers.acknowledge()

    def reconcile(self, name: str, retry_failed: bool = False, report: bool = True) -> list[VersionState]:
        """Bring `name` in line with the repository now (see Reconciler.reconcile)."""
        return self.repository.reconcile(name, retry_failed, report)

    def reconcile_all(self, retry_failed: bool = False) -> None:
        """Bring every model in line with the repository now (see Reconciler.reconcile_all)."""
        self.repository.reconcile_all(retry_failed)

    def load(self, name: str) -> list[VersionState]:
        """Load or reload `name` (the repository extension's load): here, then in every other worker."""
        if not artifact.is_valid_name(name) or not (self.settings.models / name).is_dir():
            raise ModelNotFound(name[:128], available=artifact.list_models(self.settings.models))
        with self.repository.reload_lock:
            self.repository.unloaded.discard(name)
            states = self.repository.reconcile(name, retry_failed=True)
            self.workers.publish(name, unloaded=False)
        return states

    def unload(self, name: str) -> None:
        """Stop serving every version of `name` until it is loaded again."""
        if not artifact.is_valid_name(name) or (name not in self.repository.models
                                                and not (self.settings.models / name).is_dir()):
            raise ModelNotFound(name[:128], available=self.names())
        with self.repository.reload_lock:
            self.repository.unloaded.add(name)
            self.repository.reconcile(name)
            self.workers.publish(name, unloaded=True)

    def start_watching(self) -> None:
        self.workers.start()

    def stop(self) -> None:
        """Stop following the repository and the other workers (at the worker's exit)."""
        self.workers.stop()

    # -- queries -------------------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """True when the initial load is over and every model it tried (and not unloaded) has a ready version."""
        if not self._initial_load_done.is_set():
            return False
        models, unloaded = self.repository.models, self.repository.unloaded
        return all(state.name in models for state in self.states() if state.name not in unloaded)

    def states(self) -> list[VersionState]:
        with self.repository.lock:
            return sorted(self.repository.states.values(), key=lambda s: (s.name, s.version))

    def index(self) -> list[dict]:
        """The repository index: every model in the repository, with each known version's state."""
        states = self.states()
        entries = [{"name": s.name, "version": str(s.version), "state": s.state, "reason": s.reason} for s in states]
        known = {s.name for s in states}
        for name in artifact.list_models(self.settings.models):
            if name not in known:
                reason = "unloaded by request" if name in self.repository.unloaded else "no version loaded"
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
        return sorted(entries, key=lambda e: (e["name"], int(e.get("version", 0))))

    def names(self) -> list[str]:
        return sorted(self.repository.models)

    def versions(self, name: str) -> list[int]:
        return sorted(self.repository.models.get(name, {}))

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The requested version, or the highest loaded one; raises ModelNotFound or ModelNotReady."""
        if not artifact.is_valid_name(name):
            raise ModelNotFound(name[:128])
        if version is not None and not artifact.is_valid_version(version):
            raise BadRequest(f"model version must be a positive integer, got '{version[:32]}'")
        versions = self.repository.models.get(name)
        if not versions and not self._initial_load_done.is_set():
            # Another worker may already have said ready while this one still loads: wait rather than fail.
            self._initial_load_done.wait(self.settings.startup_wait_seconds)
            versions = self.repository.models.get(name)
        if not versions:
            raise self._not_serving(name, version)
        if version is None:
            return versions[max(versions)]
        model = versions.get(int(version))
        if model is None:
            state = self.repository.states.get((name, int(version)))
            if state is not None and state.state == "LOADING":
                raise ModelNotReady(name, version)
            if state is not None and state.state == "UNAVAILABLE":
                raise ModelNotReady(name, version, f"it failed to load ({state.reason})")
            raise ModelNotFound(name, version, available=[str(v) for v in sorted(versions)])
        return model

    def _not_serving(self, name: str, version: str | None) -> Exception:
        """Why `name` has no version serving: unloaded, failed, still loading, or unknown."""
        if name in self.repository.unloaded:
            return ModelNotReady(name, version, "it was unloaded")
        failed = [st for st in self.states() if st.name == name and st.state == "UNAVAILABLE"]
        if failed:
            return ModelNotReady(name, version, f"it failed to load ({failed[-1].reason})")
        if not self._initial_load_done.is_set() and (self.settings.models / name).is_dir():
            return ModelNotReady(name, version)
        return ModelNotFound(name, available=self.names())
