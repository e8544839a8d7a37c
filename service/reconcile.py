"""Keeping a worker's loaded versions in step with the model repository: discover, load, swap, refuse.

Loading follows Triton's poll mode at its best: a new version is built and warmed up beside the serving ones,
then swapped in; a version that fails to load is recorded with its reason and whatever was serving stays.
Readers see immutable snapshots (`Reconciler.models`), so an in-flight request finishes on the session it
started with.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from service import artifact
from service.batching import Batcher, batching_config
from service.sequences import SequenceTable, table_path
from service.configfile import read_config, select_versions, version_policy
from service.errors import ConfigError, LoadError
from service.metrics import Metrics
from service.modelconfig import CONFIG_FILENAME
from service.runtime import LoadedModel, load_model
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionState:
    """What the repository index reports for one version: READY, LOADING or UNAVAILABLE, and why."""

    name: str
    version: int
    state: str
    reason: str = ""


def _sequence_table(settings: Settings, model: LoadedModel) -> SequenceTable:
    """The live sequences of a stateful version, in the state folder that every worker maps (in memory with one
    process)."""
    sequence = model.sequence
    path = None
    if settings.state_dir:
        path = table_path(settings.state_dir, model.name, model.version, settings.max_sequences,
                          sequence.state_nbytes)
    return SequenceTable(path, model.name, settings.max_sequences, sequence.state_nbytes,
                         sequence.idle_microseconds / 1e6)


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
    return (_stat(version_dir.parent / CONFIG_FILENAME), *map(_stat, files))


class Reconciler:
    """This worker's loaded versions by model name, and the state of every version it tried."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, dict[int, LoadedModel]] = {}  # replaced whole on every change, never mutated
        self.states: dict[tuple[str, int], VersionState] = {}
        self.unloaded: set[str] = set()  # models unloaded on request, in every worker
        self._failed: dict[tuple[str, int], tuple] = {}  # version -> file signature when it failed
        self._config_seen: dict[str, tuple] = {}  # config.pbtxt's signature when each model was last reconciled
        self._config_fields: dict[str, tuple[tuple, dict | None]] = {}  # name -> (signature, parsed config.pbtxt)
        self._available_seen: dict[str, list[int]] = {}  # name -> the versions on disk at its last reconcile
        self.lock = threading.Lock()  # guards the snapshots and states
        self.reload_lock = threading.RLock()  # one reconcile at a time

    def reconcile(self, name: str, retry_failed: bool = False, report: bool = True) -> list[VersionState]:
        """Bring `name` in line with the repository and the version policy; return its new states (with `report`;
        else an empty list, which is what a poll of the whole repository needs).

        Versions are tried from the highest down until the policy's count of them is serving; one that fails
        to load is skipped (the next lower one serves instead), so a bad new version never displaces a good one.
        """
        with self.reload_lock:
            model_dir = self.settings.models / name
            available = [] if name in self.unloaded else artifact.list_versions(model_dir)
            current = dict(self.models.get(name, {}))
            config_signature = _stat(model_dir / CONFIG_FILENAME)
            stale = self._config_seen.get(name, config_signature) != config_signature  # config.pbtxt changed
            try:
                fields = self._read_config(name, model_dir, config_signature) if available else None
                policy = version_policy(fields) or self.settings.version_policy_config()
            except ConfigError as exc:  # every version is refused with the reason; what serves stays
                self._refuse_all(name, available, current, retry_failed, LoadError(str(exc)))
                return self.states_of(name)
            keep = self._select(name, policy, available, current, stale, retry_failed, fields)
            self._config_seen[name] = config_signature
            seen, self._available_seen[name] = self._available_seen.get(name), available
            if keep != current or available != seen:  # else nothing changed: an idle poll ends here
                self._swap(name, current, keep, available)
            return self.states_of(name) if report else []

    def reconcile_all(self, retry_failed: bool = False) -> None:
        """Reconcile every model on disk or loaded; one model's trouble does not stop the others."""
        with self.lock:
            known = {name for name, _ in self.states}
        for name in sorted(set(artifact.list_models(self.settings.models)) | set(self.models) | known):
            try:
                self.reconcile(name, retry_failed, report=False)
            except Exception:
                log.exception("cannot reconcile %s", name)

    def states_of(self, name: str) -> list[VersionState]:
        with self.lock:
            return sorted((s for (model, _), s in self.states.items() if model == name), key=lambda s: s.version)

    def _select(self, name: str, policy: dict, available: list[int], current: dict[int, LoadedModel], stale: bool,
                retry_failed: bool, fields: dict | None) -> dict[int, LoadedModel]:
        """The versions to serve under `policy`: those serving and unchanged, and new ones that load."""
        model_dir = self.settings.models / name
        candidates, wanted = select_versions(policy, available)
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
                reason = self.states[(name, version)].reason
                self._set_state(VersionState(name, version, "READY", "config.pbtxt changed and reloading "
                                             f"failed, the earlier load serves on: {reason}"))
        return keep

    def _swap(self, name: str, current: dict[int, LoadedModel], keep: dict[int, LoadedModel],
              available: list[int]) -> None:
        """Serve `keep` for `name` from now on, and forget the versions no longer served or on disk."""
        with self.lock:
            models = dict(self.models)
            if keep:
                models[name] = keep
            else:
                models.pop(name, None)
            self.models = models
            for version in set(current) - set(keep):
                self.states.pop((name, version), None)
            for key in [k for k in self.states if k[0] == name and k[1] not in available]:
                del self.states[key]  # a version deleted from disk (or unloaded) is no longer reported
                self._failed.pop(key, None)
        for version, model in current.items():
            if version not in keep:
                self.metrics.model_loaded.labels(name, str(version), model.provider).set(0)
                if model.sequences is not None:  # a later request of one of its sequences is told why it is gone
                    model.sequences.drop_all(f"version {version} of model '{name}' was unloaded")
                    self.metrics.sequences.tables.pop((name, str(version)), None)
                log.info("unloaded %s version %s", name, version)

    def _refuse_all(self, name: str, available: list[int], current: dict[int, LoadedModel], retry_failed: bool,
                    exc: LoadError) -> None:
        """Refuse every version not serving (and not refused already for the same files) with `exc`."""
        for version in available:
            signature = _signature(self.settings.models / name / str(version))
            if version not in current and (retry_failed or self._failed.get((name, version)) != signature):
                self._refuse(name, version, signature, exc)

    def _read_config(self, name: str, model_dir: Path, signature: tuple) -> dict | None:
        """config.pbtxt's fields, parsed again only when the file's signature changed: a poll of an idle repository
        costs a stat per model, not a parse."""
        cached = self._config_fields.get(name)
        if cached is not None and cached[0] == signature:
            return cached[1]
        fields = read_config(model_dir)
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
            if model.sequence is not None:
                model.sequences = _sequence_table(settings, model)
                self.metrics.sequences.tables[(name, str(version))] = model.sequences
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
        with self.lock:
            self.states[(state.name, state.version)] = state
