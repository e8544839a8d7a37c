"""The registry of loaded model versions: discovers the repository, loads and swaps versions, answers lookups.

Loading follows Triton's poll mode at its best: a new version is built and warmed up beside the serving ones,
then swapped in; a version that fails to load is recorded with its reason and whatever was serving stays.
Readers see immutable snapshots, so an in-flight request finishes on the session it started with.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from service import artifact, modelconfig
from service.batching import Batcher, batching_config
from service.control import Control
from service.errors import BadRequest, ModelNotFound, ModelNotReady
from service.metrics import Metrics
from service.runtime import LoadedModel, LoadError, load_model
from service.settings import Settings

log = logging.getLogger(__name__)
CONTROL_CHECK_SECONDS = 0.2  # how often a worker looks at the shared control file (one stat call)


@dataclass(frozen=True)
class VersionState:
    """What the repository index reports for one version: READY, LOADING or UNAVAILABLE, and why."""

    name: str
    version: int
    state: str
    reason: str = ""


def release_free_memory() -> None:
    """glibc's malloc_trim: return the free parts of the heap to the system (a no-op elsewhere)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _stat(path: Path) -> tuple:
    """(name, mtime, size) of a file, or () when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return ()
    return (path.name, stat.st_mtime_ns, stat.st_size)


def _signature(version_dir: Path) -> tuple:
    """Changes when a version's files or its model's config.pbtxt change, so a failed version is retried only after
    it was fixed."""
    try:
        files = sorted(version_dir.iterdir())
    except OSError:
        files = []
    return (_stat(version_dir.parent / modelconfig.CONFIG_FILENAME), *map(_stat, files))


class ModelRegistry:
    """Loaded versions by model name, kept in step with the repository and the shared control state."""

    def __init__(self, settings: Settings, metrics: Metrics, control: Control | None = None):
        self.settings = settings
        self.metrics = metrics
        self.control = control
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._states: dict[tuple[str, int], VersionState] = {}
        self._failed: dict[tuple[str, int], tuple] = {}  # version -> file signature when it failed
        self._unloaded: set[str] = set()
        self._config_seen: dict[str, tuple] = {}  # config.pbtxt's signature when each model was last reconciled
        self._config_fields: dict[str, tuple[tuple, dict | None]] = {}  # name -> (signature, parsed config.pbtxt)
        self._available_seen: dict[str, list[int]] = {}  # name -> the versions on disk at its last reconcile
        self._lock = threading.Lock()  # guards the snapshots and states
        self._reload_lock = threading.RLock()  # one reconcile at a time
        self._initial_load_done = threading.Event()
        self._stop = threading.Event()
        self._generation = 0

    # -- loading -------------------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every model the policy selects; failures are recorded, never raised."""
        try:
            if self.control is not None:  # a worker started after load/unload calls begins in step with them
                # Known to the others from now on, as having applied nothing yet: a load/unload call made while
                # this worker is still loading waits for it instead of returning before it serves the change.
                self.control.acknowledge(0)
                state = self.control.read()
                self._unloaded, self._generation = set(state["unloaded"]), state["generation"]
            self.reconcile_all()
            release_free_memory()  # loading read each model file whole: give the freed heap back to the system
        finally:
            self._initial_load_done.set()
            if self.control is not None:
                self.control.acknowledge(self._generation)  # a new worker starts in step with the others

    def reconcile(self, name: str, retry_failed: bool = False, report: bool = True) -> list[VersionState]:
        """Bring `name` in line with the repository and the version policy; return its new states (with `report`;
        else an empty list, which is what a poll of the whole repository needs).

        Versions are tried from the highest down until the policy's count of them is serving; one that fails
        to load is skipped (the next lower one serves instead), so a bad new version never displaces a good one.
        """
        with self._reload_lock:
            model_dir = self.settings.models / name
            available = [] if name in self._unloaded else artifact.list_versions(model_dir)
            current = dict(self._models.get(name, {}))
            config_signature = _stat(model_dir / modelconfig.CONFIG_FILENAME)
            stale = self._config_seen.get(name, config_signature) != config_signature  # config.pbtxt changed
            try:
                fields = self._read_config(name, model_dir, config_signature) if available else None
                policy = modelconfig.version_policy(fields) or self.settings.version_policy_config()
            except modelconfig.ConfigError as exc:  # every version is refused with the reason; what serves stays
                for version in available:
                    signature = _signature(model_dir / str(version))
                    if version not in current and (retry_failed or self._failed.get((name, version)) != signature):
                        self._refuse(name, version, signature, LoadError(str(exc)))
                return self._states_of(name)
            candidates, wanted = modelconfig.select_versions(policy, available)
            keep: dict[int, LoadedModel] = {}
            for version in candidates:
                if wanted is not None and len(keep) >= wanted:
                    break
                old = current.get(version)
                if old is not None and not stale:
                    keep[version] = old
                    continue
                signature = _signature(model_dir / str(version))
                if not retry_failed and self._failed.get((name, version)) == signature:
                    if old is not None:
                        keep[version] = old
                    continue  # failed before and unchanged since: do not retry on every poll
                model = self._load(name, version, signature, fields)
                if model is not None:
                    keep[version] = model
                elif old is not None:  # a version loaded under the earlier config.pbtxt serves on
                    keep[version] = old
                    reason = self._states[(name, version)].reason
                    self._set_state(VersionState(name, version, "READY", "config.pbtxt changed and reloading "
                                                 f"failed, the earlier load serves on: {reason}"))
            self._config_seen[name] = config_signature
            seen, self._available_seen[name] = self._available_seen.get(name), available
            if keep == current and available == seen:  # nothing changed: an idle poll ends here
                return self._states_of(name) if report else []
            with self._lock:
                models = dict(self._models)
                if keep:
                    models[name] = keep
                else:
                    models.pop(name, None)
                self._models = models
                for version in set(current) - set(keep):
                    self._states.pop((name, version), None)
                for key in [k for k in self._states if k[0] == name and k[1] not in available]:
                    del self._states[key]  # a version deleted from disk (or unloaded) is no longer reported
                    self._failed.pop(key, None)
            for version, model in current.items():
                if version not in keep:
                    self.metrics.model_loaded.labels(name, str(version), model.provider).set(0)
                    log.info("unloaded %s version %s", name, version)
            return self._states_of(name) if report else []

    def _states_of(self, name: str) -> list[VersionState]:
        with self._lock:
            return sorted((s for (model, _), s in self._states.items() if model == name), key=lambda s: s.version)

    def _read_config(self, name: str, model_dir: Path, signature: tuple) -> dict | None:
        """config.pbtxt's fields, parsed again only when the file's signature changed: a poll of an idle repository
        costs a stat per model, not a parse."""
        cached = self._config_fields.get(name)
        if cached is not None and cached[0] == signature:
            return cached[1]
        fields = modelconfig.read_config(model_dir)
        self._config_fields[name] = (signature, fields)
        return fields

    def _load(self, name: str, version: int, signature: tuple, fields: dict | None) -> LoadedModel | None:
        self._set_state(VersionState(name, version, "LOADING"))
        settings = self.settings
        try:
            model = load_model(settings.models / name / str(version), settings.device, settings.session_threads,
                               config_fields=fields, default_max_batch_size=settings.default_max_batch_size,
                               default_version_policy=settings.version_policy_config(),
                               max_model_bytes=settings.max_model_bytes,
                               share_weights_bytes=settings.share_weights_bytes,
                               weights_cache=Path(settings.state_dir) / "weights" if settings.state_dir else None)
            if model.batching:  # the operator's cap, below the model's own max_batch_size
                model.max_batch_size = min(model.max_batch_size, settings.batch_limit(name))
            block = model.config.dynamic_batching
            if settings.dynamic_batching and block is not None and model.batching:
                model.batcher = Batcher(batching_config(block, model.max_batch_size),
                                        self.metrics.for_model(name, str(version)).observe_batch)
            if model.config.ignored:
                log.info("%s: config.pbtxt's %s mean something only to Triton and are ignored", name,
                         ", ".join(model.config.ignored))
        except Exception as exc:  # LoadError, or anything unforeseen (a folder where a file should be, ...)
            if not isinstance(exc, LoadError):
                log.exception("unexpected error loading %s version %s", name, version)
                exc = LoadError(f"cannot be read ({type(exc).__name__})")
            self._refuse(name, version, signature, exc)
            return None
        self._failed.pop((name, version), None)
        self._set_state(VersionState(name, version, "READY"))
        self.metrics.model_loaded.labels(name, str(version), model.provider).set(1)
        return model

    def _refuse(self, name: str, version: int, signature: tuple, exc: Exception) -> None:
        log.error("cannot load %s version %s: %s", name, version, exc)
        self._failed[(name, version)] = signature
        self._set_state(VersionState(name, version, "UNAVAILABLE", str(exc)))
        self.metrics.load_failures.labels(name).inc()

    def _set_state(self, state: VersionState) -> None:
        with self._lock:
            self._states[(state.name, state.version)] = state

    # -- repository extension ------------------------------------------------------------------------------
    def load(self, name: str) -> list[VersionState]:
        """Load or reload `name` (the repository extension's load): here, then in every other worker."""
        if not artifact.is_valid_name(name) or not (self.settings.models / name).is_dir():
            raise ModelNotFound(name[:128], available=artifact.list_models(self.settings.models))
        with self._reload_lock:
            self._unloaded.discard(name)
            states = self.reconcile(name, retry_failed=True)
            self._publish_change(name, unloaded=False)
        return states

    def unload(self, name: str) -> None:
        """Stop serving every version of `name` until it is loaded again."""
        if not artifact.is_valid_name(name) or (name not in self._models and not (self.settings.models / name).is_dir()):
            raise ModelNotFound(name[:128], available=self.names())
        with self._reload_lock:
            self._unloaded.add(name)
            self.reconcile(name)
            self._publish_change(name, unloaded=True)

    def _publish_change(self, name: str, unloaded: bool) -> None:
        """Record a load/unload for every worker, apply what other workers recorded meanwhile, then wait."""
        if self.control is None:
            return
        state = self.control.change(name, unloaded)
        self._apply_state(state)
        behind = self.control.wait_for(self._generation, self.settings.startup_wait_seconds)
        if behind:
            log.warning("workers %s had not applied the change to %s after %s s", behind, name,
                        self.settings.startup_wait_seconds)

    def _apply_state(self, state: dict) -> None:
        """Take in the shared state: the unloaded set, and a fresh look at every model (a load call elsewhere
        may have been for a new version); acknowledge only once all of it is applied."""
        with self._reload_lock:
            if state["generation"] <= self._generation:
                return
            self._unloaded = set(state["unloaded"])
            self.reconcile_all(retry_failed=True)
            self._generation = state["generation"]
            self.control.acknowledge(self._generation)

    def reconcile_all(self, retry_failed: bool = False) -> None:
        """Reconcile every model on disk or loaded; one model's trouble does not stop the others."""
        with self._lock:
            known = {name for name, _ in self._states}
        for name in sorted(set(artifact.list_models(self.settings.models)) | set(self._models) | known):
            try:
                self.reconcile(name, retry_failed, report=False)
            except Exception:
                log.exception("cannot reconcile %s", name)

    def _apply_control(self) -> bool:
        """Take in load/unload calls made on other workers; True when the shared state moved on."""
        if self.control is None:
            return False
        state = self.control.read()
        if state["generation"] <= self._generation:
            return False
        self._apply_state(state)
        return True

    def watch(self) -> None:
        """Background loop: follow the shared control file and, if polling is on, the repository."""
        poll = self.settings.poll_seconds
        last_poll = time.monotonic()
        while not self._stop.wait(CONTROL_CHECK_SECONDS):
            now = time.monotonic()
            try:
                self._apply_control()
                if poll > 0 and now - last_poll >= poll:
                    last_poll = now
                    self.reconcile_all()
            except Exception:  # the watcher must outlive any one scan; the next one may succeed
                log.exception("repository watch failed")

    def start_watching(self) -> None:
        if self.control is not None or self.settings.poll_seconds > 0:
            threading.Thread(target=self.watch, name="repository-watcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    # -- queries -------------------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """True when the initial load is over and every model it tried (and not unloaded) has a ready version."""
        if not self._initial_load_done.is_set():
            return False
        models = self._models
        return all(state.name in models for state in self.states() if state.name not in self._unloaded)

    def states(self) -> list[VersionState]:
        with self._lock:
            return sorted(self._states.values(), key=lambda s: (s.name, s.version))

    def index(self) -> list[dict]:
        """The repository index: every model in the repository, with each known version's state."""
        states = self.states()
        entries = [{"name": s.name, "version": str(s.version), "state": s.state, "reason": s.reason} for s in states]
        known = {s.name for s in states}
        for name in artifact.list_models(self.settings.models):
            if name not in known:
                reason = "unloaded by request" if name in self._unloaded else "no version loaded"
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
        return sorted(entries, key=lambda e: (e["name"], int(e.get("version", 0))))

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
            if name in self._unloaded:
                raise ModelNotReady(name, version, "it was unloaded")
            failed = [st for st in self.states() if st.name == name and st.state == "UNAVAILABLE"]
            if failed:
                raise ModelNotReady(name, version, f"it failed to load ({failed[-1].reason})")
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

