"""The study of `tune`: its storage (SQLite or a server database), the budget lock, heartbeats, sampler and pruner."""

from __future__ import annotations

import contextlib
import fcntl
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import optuna
from optuna.exceptions import ExperimentalWarning

from training.config import RunConfig
from training.tasks import higher_is_better

PRUNERS = ("median", "hyperband", "none")
SQLITE_TIMEOUT = 60.0  # seconds a worker waits for another's write lock; SQLite serializes writers
HEARTBEAT_SECONDS = 10  # a running trial's heartbeat; one silent for GRACE_SECONDS (a killed worker) is failed
GRACE_SECONDS = 60


@dataclass
class TuneSettings:
    """What every worker process needs (pickled into each one)."""

    config: RunConfig
    out: Path
    storage: str
    study: str
    trials: int
    metric: str
    pruner: str = "median"
    startup_trials: int = 5  # pruner: completed trials before any trial may be pruned
    warmup_epochs: int = 0  # pruner: epochs of a trial before it may be pruned
    sampler_seed: int = 0  # worker i samples with sampler_seed + i
    threads: int | None = None  # torch threads per worker (None: torch's default)
    quiet: bool = False
    folds: int = 1  # 1: score on the config's validation split; K >= 2: K-fold cross-validation

    @property
    def maximize(self) -> bool:
        return higher_is_better(self.metric)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna marks heartbeats, fail_stale_trials and its matplotlib plots experimental, and says heartbeats are
    meant for Study.optimize: the workers here ask and tell, with their own heartbeat thread (`heartbeat`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
        yield


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and url != "sqlite:///:memory:" else None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats (a killed worker's trial is failed) and SQLite's lock timeout."""
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else {}
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_optuna():
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS)


@contextlib.contextmanager
def budget_lock(url: str) -> Iterator[None]:
    """Counting the study's trials and adding one is atomic among the processes of one SQLite file (a file lock
    beside it). A server database has no such lock: there, `--trials N` may end with up to (workers - 1) more."""
    path = _sqlite_path(url)
    if path is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every HEARTBEAT_SECONDS while it runs (as study.optimize does)."""
    stop = threading.Event()

    def beat():
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def make_sampler(settings: TuneSettings, index: int) -> optuna.samplers.TPESampler:
    # constant_liar: a running trial counts as a bad result, so parallel workers do not sample the same point
    return optuna.samplers.TPESampler(seed=settings.sampler_seed + index, constant_liar=True,
                                      n_startup_trials=max(2, min(10, settings.trials // 3)))


def make_pruner(settings: TuneSettings) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                           n_warmup_steps=settings.warmup_epochs)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, settings.warmup_epochs),
                                              max_resource=settings.config.train.epochs)
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner: unknown pruner {settings.pruner!r}; valid pruners are {list(PRUNERS)}")


def load_study(settings: TuneSettings, storage, index: int = 0) -> optuna.Study:
    """Create the study or join it, and refuse one that optimizes something else."""
    study = optuna.create_study(storage=storage, study_name=settings.study, load_if_exists=True,
                                direction="maximize" if settings.maximize else "minimize",
                                sampler=make_sampler(settings, index), pruner=make_pruner(settings))
    metric, folds = study.user_attrs.get("metric"), study.user_attrs.get("folds")
    if metric is None:
        study.set_user_attr("metric", settings.metric)
    elif metric != settings.metric:
        raise ValueError(f"--metric: study {settings.study!r} in {settings.storage} optimizes {metric!r}, not "
                         f"{settings.metric!r}; pass --metric {metric} or another --study")
    if folds is None and study.get_trials(deepcopy=False):  # a study from before --folds scored on the split
        folds = 1
    if folds is None:
        study.set_user_attr("folds", settings.folds)
    elif folds != settings.folds:  # values scored on other data do not compare
        raise ValueError(f"--folds: study {settings.study!r} in {settings.storage} scores trials with "
                         f"{folds} fold(s), not {settings.folds}; pass --folds {folds} or another --study")
    return study


