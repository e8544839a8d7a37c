"""The trials of `tune`: each fits its config (once, or once per cross-validation fold) and tells the study how it
ended; worker processes take trials until the study holds its budget."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import socket
import threading
import time
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from training.config import RunConfig
from training.loop import improves, patience_spent
from training.prepare import prepare
from training.tasks import higher_is_better
from training.trainer import fit
from training.tune_space import apply_values, suggest
from training.tune_study import TuneSettings, _quiet_optuna, budget_lock, heartbeat, load_study, open_storage


class TrialDone(Exception):
    """Raised from the epoch callback where fit would stop: the trial needs no test metrics, baseline or plots."""


class EpochReporter:
    """fit's epoch callback for one trial: report the metric, prune, and end the trial where fit would stop.

    The trial's value is the metric at the epoch whose checkpoint fit keeps (the best `train.monitor`).
    `report=False` (cross-validation folds after the first) neither reports nor prunes: Optuna's pruners compare
    the best value a trial has reported at any step with the others' values at the current step, so values of
    another fold would be compared with this fold's. Under --folds the pruner judges fold 0's epochs only."""

    def __init__(self, trial: optuna.Trial, metric: str, config: RunConfig, report: bool = True):
        self.trial, self.metric, self.train, self.report = trial, metric, config.train, report
        self.maximize_monitor = higher_is_better(config.train.monitor)
        self.best_monitor = -math.inf if self.maximize_monitor else math.inf
        self.stale = 0
        self.epochs = 0  # epochs this fit has run
        self.value: float | None = None

    def __call__(self, epoch: int, row: dict) -> None:
        self.epochs += 1
        if self.metric not in row:
            raise ValueError(f"--metric: {self.metric!r} is not measured for this task; choose one of "
                             f"{sorted(k for k in row if k.startswith('val_'))}")
        value = row[self.metric]
        if not math.isfinite(value):
            raise ValueError(f"{self.metric} is {value} at epoch {epoch}: the run diverged")
        monitor = row[self.train.monitor]
        if improves(monitor, self.best_monitor, self.maximize_monitor):  # the loop's own rule
            self.best_monitor, self.stale, self.value = monitor, 0, value
        else:
            self.stale += 1
        if self.report:
            self.trial.report(value, epoch)
        if self.report and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        if epoch >= self.train.epochs or patience_spent(self.stale, self.train.patience):
            raise TrialDone()


def run_trial(study: optuna.Study, trial: optuna.Trial, settings: TuneSettings, storage,
              log: Callable[[str], None]) -> None:
    """Fit one trial's config into trials/<number>/ and tell the study how it ended."""
    started = time.perf_counter()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    values: list[float] = []  # one per fold
    reporters: list[EpochReporter] = []
    run_dir = settings.out / "trials" / str(trial.number)
    state, note = TrialState.COMPLETE, ""
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(settings.study),
                                                               trial.number)
    with heartbeat(storage, trial_id):
        try:
            config = apply_values(settings.config, suggest(trial, settings.config.search))
            for k in range(settings.folds):
                # the trial's own epochs, patience and monitor; the pruner judges the first fold
                reporter = EpochReporter(trial, settings.metric, config, report=k == 0)
                reporters.append(reporter)
                folder = run_dir if settings.folds == 1 else run_dir / f"fold-{k}"
                try:
                    fit(config, folder, log=lambda _m: None, quiet=True, epoch_callback=reporter,
                        fold=None if settings.folds == 1 else (k, settings.folds))
                except TrialDone:
                    pass
                if reporter.value is None:
                    break
                values.append(reporter.value)
            if settings.folds > 1 and len(values) == settings.folds:
                trial.set_user_attr("fold_values", values)
        except optuna.TrialPruned as exc:
            state, note = TrialState.PRUNED, str(exc)
        except Exception as exc:  # a bad point of the space (or a bug) fails this trial, not the study
            state, note = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", note)
    trial.set_user_attr("epochs", sum(r.epochs for r in reporters))  # every fold's
    for checkpoint in run_dir.glob("**/*.pt"):  # the final fit retrains the best config; these are not used
        checkpoint.unlink()
    value = sum(values) / len(values) if len(values) == settings.folds else None
    if state is TrialState.COMPLETE and value is None:
        state, note = TrialState.FAIL, "no epoch was run"
    study.tell(trial, value if state is TrialState.COMPLETE else None, state=state)
    if not settings.quiet:
        result = f"{settings.metric} {value:.4f}" if state is TrialState.COMPLETE else note
        log(f"trial {trial.number:3d} {state.name.lower():8s} {result}  ({time.perf_counter() - started:.1f} s, "
            f"{trial.user_attrs['worker']})  {json.dumps(trial.params)}")


def run_worker(settings: TuneSettings, index: int = 0, log: Callable[[str], None] = print,
               barrier: threading.Barrier | None = None) -> None:
    """Run trials until the study holds `settings.trials` of them (this process's share of the shared budget).

    `barrier`: the workers of one command start their first trial together, once all have imported torch."""
    prepare(settings.config)  # imports the data libraries now, so that the first trial's time is its own
    if settings.threads:  # the worker processes share the CPUs
        torch.set_num_threads(settings.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _quiet_optuna():
        storage = open_storage(settings.storage)
        study = load_study(settings, storage, index)
        if barrier is not None:
            barrier.wait(timeout=600)
        while True:
            with budget_lock(settings.storage):
                optuna.storages.fail_stale_trials(study)
                if len(study.get_trials(deepcopy=False)) >= settings.trials:
                    return
                trial = study.ask()
            run_trial(study, trial, settings, storage, log)


def _worker_main(settings: TuneSettings, index: int, barrier) -> None:
    run_worker(settings, index, barrier=barrier)




def run_workers(settings: TuneSettings, jobs: int, log: Callable[[str], None]) -> None:
    """Run the study's trials in this process (one job) or in `jobs` worker processes; RuntimeError when a worker
    process dies."""
    if jobs == 1:
        run_worker(settings, 0, log)
        return
    # processes, not threads: torch on CPU holds the GIL too often for threads to train in parallel
    context = multiprocessing.get_context("spawn")  # a fork of a process that has run torch can deadlock
    barrier = context.Barrier(jobs)
    workers = [context.Process(target=_worker_main, args=(settings, i, barrier), name=f"tune-worker-{i}")
               for i in range(jobs)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [w.name for w in workers if w.exitcode != 0]
    if failed:
        raise RuntimeError(f"worker process(es) {failed} exited with an error (see above)")
