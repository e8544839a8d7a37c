"""The registry of loaded model versions: discovers the repository, loads versions, answers lookups."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from service import artifact
from service.errors import BadRequest, ModelNotFound, ModelNotReady
from service.metrics import Metrics
from service.runtime import LoadedModel, LoadError, load_model
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionState:
    """What the repository index reports for one version: READY, LOADING or UNAVAILABLE, and why."""

    name: str
    version: int
    state: str
    reason: str = ""


class ModelRegistry:
    """Loaded versions by model name. Readers see immutable snapshots; loads swap them in under a lock."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._states: dict[tuple[str, int], VersionState] = {}
        self._lock = threading.Lock()
        self._initial_load_done = threading.Event()

    # -- loading -------------------------------------------------------------------------------------------
    def wanted_versions(self, name: str) -> list[int]:
        """The versions of `name` that the version policy says to serve."""
        versions = artifact.list_versions(self.settings.models / name)
        latest = self.settings.parse_version_policy()
        return versions if latest is None else versions[-latest:]

    def load_all(self) -> None:
        """Load every model the policy selects; failures are recorded, never raised."""
        try:
            for name in artifact.list_models(self.settings.models):
                for version in self.wanted_versions(name):
                    self.load_version(name, version)
        finally:
            self._initial_load_done.set()

    def load_version(self, name: str, version: int) -> bool:
        """Load one version and swap it in; on failure keep whatever was serving and record why."""
        self._set_state(VersionState(name, version, "LOADING"))
        try:
            model = load_model(self.settings.models / name / str(version), self.settings.device,
                               self.settings.session_threads)
        except LoadError as exc:
            log.error("cannot load %s version %s: %s", name, version, exc)
            self._set_state(VersionState(name, version, "UNAVAILABLE", str(exc)))
            self.metrics.load_failures.labels(name).inc()
            return False
        with self._lock:
            versions = dict(self._models.get(name, {}))
            versions[version] = model
            self._models = {**self._models, name: versions}
            self._states[(name, version)] = VersionState(name, version, "READY")
        self.metrics.model_loaded.labels(name, str(version), model.provider).set(1)
        return True

    def _set_state(self, state: VersionState) -> None:
        with self._lock:
            self._states[(state.name, state.version)] = state

    # -- queries -------------------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """True when the initial load is over and every model it tried has a ready version."""
        if not self._initial_load_done.is_set():
            return False
        models = self._models
        return all(state.name in models for state in self.states())

    def states(self) -> list[VersionState]:
        with self._lock:
            return sorted(self._states.values(), key=lambda s: (s.name, s.version))

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The requested version, or the highest loaded one; raises ModelNotFound or ModelNotReady."""
        if not artifact.is_valid_name(name):
            raise ModelNotFound(name[:128])
        if version is not None and not artifact.is_valid_version(version):
            raise BadRequest(f"model version must be a positive integer, got '{version[:32]}'")
        versions = self._models.get(name)
        if not versions and not self._initial_load_done.is_set():
            # Another worker may already have said ready while this one still loads: wait rather than fail.
            self._initial_load_done.wait(self.settings.startup_wait_seconds)
            versions = self._models.get(name)
        if not versions:
            if not self._initial_load_done.is_set() and (self.settings.models / name).is_dir():
                raise ModelNotReady(name, version)
            raise ModelNotFound(name, available=self.names())
        if version is None:
            return versions[max(versions)]
        model = versions.get(int(version))
        if model is None:
            state = self._states.get((name, int(version)))
            if state is not None and state.state == "LOADING":
                raise ModelNotReady(name, version)
            if state is not None and state.state == "UNAVAILABLE":
                raise ModelNotReady(name, version, f"it failed to load ({state.reason})")
            raise ModelNotFound(name, version, available=[str(v) for v in sorted(versions)])
        return model
