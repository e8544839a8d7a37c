"""`python -m training tune CONFIG`: Optuna search over the config's `search` table, then a fit of the best config.

Trials train on the training split and are scored on the validation split, or with `--folds K` by K-fold
cross-validation over the training and validation rows (the mean of the K folds' values: a small validation split
is a noisy judge); the test split is read once, by the final fits of the best config and of the config as
written. TPE samples, a pruner stops trials whose validation metric lags at the same epoch, and any number of
processes or machines share one study through its storage URL.
`--trials N` is the size of the whole study: running the command again with a larger N continues it.

A run folder holds:
  study.db              the study (SQLite), unless --storage names another database
  trials/<number>/      each trial's config.json and metrics.jsonl (it ends after its last epoch: no test
                        metrics, baseline, plots; its checkpoints are deleted); with --folds, one fold-<k>/ each
  best/, base/          the final fits of the best config and of the config as written
  best_config.toml      the best trial's full config, without the search table: for `fit`, or as
                        training/configs/NAME.toml for `retrain`
  report.md, summary.json, plots/{optimization_history,intermediate_values,param_importances}.png

The search is split by concern: training/tune_space.py (the search table as suggestions), tune_study.py (storage,
locks, sampler, pruner), tune_trials.py (trials and worker processes), tune_report.py (plots and report.md), and
config_toml.py (best_config.toml).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import optuna
import torch
from optuna.trial import TrialState

from training.architectures import get_arch
from training.config import RunConfig
from training.config_toml import config_toml
from training.prepare import prepare
from training.trainer import fit
from training.tune_report import wait_for_running, write_plots, write_report
from training.tune_space import apply_values, base_params, current_values, suggest
from training.tune_study import (TuneSettings, _quiet_optuna, budget_lock, default_storage, load_study, make_pruner,
                                 open_storage)
from training.tune_trials import run_workers


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` torch threads (None: leave them)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_arguments(config: RunConfig, trials: int, jobs: int, folds: int, storage: str | None) -> None:
    """Refuse what cannot be searched, before any process starts."""
    if not config.search:
        raise ValueError(f"config {config.name or '(flags)'} has no [search] table: nothing to tune "
                         f"(training/configs/digits-cnn.toml has one)")
    if get_arch(config.arch).adversarial:
        raise ValueError(f"tune does not search the GAN (arch {config.arch!r}): its loop reports no validation metric "
                         "per epoch")
    if trials < 1 or jobs < 1:
        raise ValueError(f"--trials and --jobs: expected at least 1, got {trials} and {jobs}")
    if folds < 1:
        raise ValueError(f"--folds: expected 1 (the config's validation split) or at least 2, got {folds}")
    if folds > 1:
        prepare(config, (0, folds))  # refuse a series, or more folds than rows, before any process starts
    if storage in ("sqlite://", "sqlite:///:memory:"):
        raise ValueError("--storage: an in-memory database is not shared between worker processes; name a file, "
                         "e.g. sqlite:///runs/study.db")


def _open_study(settings: TuneSettings, log: Callable[[str], None]) -> optuna.Study:
    """Create or join the study; the process that creates it queues the config as written as trial 0."""
    with _quiet_optuna():
        storage = open_storage(settings.storage)
        with budget_lock(settings.storage):
            study = load_study(settings, storage)
            if not study.get_trials(deepcopy=False):
                params = base_params(settings.config)
                if params is not None:
                    study.enqueue_trial(params, user_attrs={"source": "config as written"})
                else:
                    log("the config as written lies outside its search space: it is not queued as trial 0")
    return study


def _finish(settings: TuneSettings, study: optuna.Study, best: optuna.trial.FrozenTrial) -> tuple[dict, dict, ...]:
    """Write best_config.toml and the plots, then fit the best config and the config as written; return (best
    values, the plots not drawn and why, the two fits' summaries)."""
    config, out = settings.config, settings.out
    best_values = suggest(optuna.trial.FixedTrial(best.params), config.search)
    best_config = apply_values(config, best_values)
    base_config = apply_values(config, {})
    header = (f"{config.name}: the best trial ({best.number}, {settings.metric} {best.value:.6g}) of study "
              f"{settings.study!r}, written by `python -m training tune`.\n"
              f"Fit it with `python -m training fit best_config.toml`; copy it to training/configs/{config.name}.toml "
              f"for `retrain`.")
    (out / "best_config.toml").write_text(config_toml(best_config, header))
    skipped = write_plots(study, out / "plots")
    with torch_threads(settings.threads):  # as many as a trial had: a CPU run's numbers depend on the count
        best_summary = fit(best_config, out / "best", log=lambda _m: None, quiet=True)
        base_summary = best_summary if best_config == base_config else fit(base_config, out / "base",
                                                                           log=lambda _m: None, quiet=True)
    return best_values, skipped, best_summary, base_summary


def tune(config: RunConfig, out: Path, trials: int, storage: str | None = None, jobs: int = 1,
         metric: str | None = None, pruner: str = "median", startup_trials: int = 5, warmup_epochs: int | None = None,
         sampler_seed: int | None = None, study_name: str | None = None, quiet: bool = False,
         log: Callable[[str], None] = print, folds: int = 1) -> dict:
    """Search `config.search` with `jobs` worker processes until the study holds `trials` trials; write the best
    config, the report and the plots into `out`, fit the best config and the config as written; return summary.json.
    """
    _check_arguments(config, trials, jobs, folds, storage)
    out.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0))
    settings = TuneSettings(
        config=config, out=out, storage=storage or default_storage(out), study=study_name or config.name,
        trials=trials, metric=metric or config.train.monitor, pruner=pruner, startup_trials=startup_trials,
        warmup_epochs=config.train.epochs // 10 if warmup_epochs is None else warmup_epochs,
        sampler_seed=config.seed if sampler_seed is None else sampler_seed,
        threads=max(1, cpus // jobs) if jobs > 1 else None, quiet=quiet, folds=folds)
    make_pruner(settings)  # refuse an unknown pruner before any process starts
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    study = _open_study(settings, log)
    log(f"tuning {settings.study}: {trials} trials in {settings.storage}, {jobs} worker process(es), "
        f"objective {settings.metric} ({'maximize' if settings.maximize else 'minimize'})"
        + (f", the mean of {folds}-fold cross-validation" if folds > 1 else ""))
    run_workers(settings, jobs, log)
    search_seconds = time.perf_counter() - started
    wait_for_running(study, log)
    try:
        best = study.best_trial
    except ValueError:
        raise ValueError(f"no trial of study {settings.study!r} completed; their errors are in the study "
                         f"(user attribute 'error')") from None
    best_values, skipped, best_summary, base_summary = _finish(settings, study, best)
    headline = best_summary.headline_metric
    summary = {
        "name": config.name, "study": settings.study, "storage": settings.storage, "metric": settings.metric,
        "folds": settings.folds,
        "direction": "maximize" if settings.maximize else "minimize", "trials": len(study.trials),
        "states": {s.name.lower(): sum(t.state is s for t in study.trials) for s in TrialState},
        "workers": sorted({t.user_attrs.get("worker", "?") for t in study.trials}),
        "best": {"number": best.number, "value": best.value, "params": best.params},
        "best_values": best_values, "base_values": current_values(config), "headline_metric": headline,
        "best_fit": best_summary.metrics, "base_fit": base_summary.metrics,
        "search_seconds": round(search_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(out, settings, study, summary, skipped)
    log(f"best trial {best.number}: {settings.metric} {best.value:.4f}  {json.dumps(best_values)}")
    log(f"test {headline}: best config {best_summary.headline:.4f}, config as written {base_summary.headline:.4f}")
    return summary
