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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import math
import multiprocessing
import os
import socket
import threading
import time
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from training.config import FREE_SECTIONS, RunConfig
from training.tasks import higher_is_better

PRUNERS = ("median", "hyperband", "none")
SQLITE_TIMEOUT = 60.0  # seconds a worker waits for another's write lock; SQLite serializes writers
HEARTBEAT_SECONDS = 10  # a running trial's heartbeat; one silent for GRACE_SECONDS (a killed worker) is failed
GRACE_SECONDS = 60
TOML_SECTIONS = ("data", "model", "optimizer", "schedule", "train", "split", "eval")


class TrialDone(Exception):
    """Raised from the epoch callback where fit would stop: the trial needs no test metrics, baseline or plots."""


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


def _encode(choice: Any) -> Any:
    """Optuna's categorical choices are scalars: lists and tables are stored as their JSON text."""
    return json.dumps(choice) if isinstance(choice, (list, dict)) else choice


def suggest(trial: optuna.trial.BaseTrial, search: dict[str, dict]) -> dict[str, Any]:
    """The trial's value for every path of the search table (a FixedTrial replays a finished trial's params)."""
    values: dict[str, Any] = {}
    for path, spec in search.items():
        kind = spec["type"]
        if kind == "float":
            values[path] = trial.suggest_float(path, spec["low"], spec["high"], log=spec.get("log", False),
                                               step=spec.get("step"))
        elif kind == "int":
            values[path] = trial.suggest_int(path, spec["low"], spec["high"], log=spec.get("log", False),
                                             step=spec.get("step", 1))
        elif kind == "categorical":
            encoded = [_encode(c) for c in spec["choices"]]
            values[path] = spec["choices"][encoded.index(trial.suggest_categorical(path, encoded))]
        else:  # widths: the number of layers, then each layer's width (params `<path>.layers`, `<path>.0`, ...)
            layers = trial.suggest_int(f"{path}.layers", *spec["layers"])
            values[path] = [trial.suggest_int(f"{path}.{i}", spec["low"], spec["high"], log=spec.get("log", False),
                                              step=spec.get("step", 1)) for i in range(layers)]
    return values


def apply_values(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """The config with each dotted path set to its value (a table merged into a table) and no search table."""
    data = config.to_dict()
    data["search"] = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        if isinstance(value, dict) and path in FREE_SECTIONS:
            target[leaf] = {**target[leaf], **value}
        else:
            target[leaf] = value
    return RunConfig.from_dict(data)


def _in_range(value: Any, spec: dict) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec["low"] <= value <= spec["high"]:
        return False
    if spec["type"] != "float" and not isinstance(value, int):
        return False
    step = spec.get("step", 1 if spec["type"] != "float" else None)
    return step is None or math.isclose((value - spec["low"]) / step, round((value - spec["low"]) / step),
                                        abs_tol=1e-9)


def current_values(config: RunConfig) -> dict[str, Any]:
    """The config's own value at each path of its search table (for a table: the keys its choices set)."""
    data, values = config.to_dict(), {}
    for path, spec in config.search.items():
        value: Any = data
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if path in FREE_SECTIONS and isinstance(value, dict):
            value = {k: value.get(k) for k in sorted({k for choice in spec["choices"] for k in choice})}
        values[path] = value
    return values


def base_params(config: RunConfig) -> dict[str, Any] | None:
    """The config as written, as the params of a trial, or None when one of its values is outside the space."""
    params: dict[str, Any] = {}
    for path, value in current_values(config).items():
        spec = config.search[path]
        kind = spec["type"]
        if kind == "categorical":
            matches = [c for c in spec["choices"] if c == value or (
                isinstance(c, dict) and isinstance(value, dict) and all(value.get(k) == v for k, v in c.items()))]
            if not matches:
                return None
            params[path] = _encode(matches[0])
        elif kind == "widths":
            lo, hi = spec["layers"]
            if not isinstance(value, list) or not lo <= len(value) <= hi or not all(_in_range(w, spec) for w in value):
                return None
            params[f"{path}.layers"] = len(value)
            params.update({f"{path}.{i}": w for i, w in enumerate(value)})
        elif _in_range(value, spec):
            params[path] = value
        else:
            return None
    return params


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
        if monitor > self.best_monitor if self.maximize_monitor else monitor < self.best_monitor:
            self.best_monitor, self.stale, self.value = monitor, 0, value
        else:
            self.stale += 1
        if self.report:
            self.trial.report(value, epoch)
        if self.report and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        if epoch >= self.train.epochs or (self.train.patience and self.stale >= self.train.patience):
            raise TrialDone()


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


def run_trial(study: optuna.Study, trial: optuna.Trial, settings: TuneSettings, storage,
              log: Callable[[str], None]) -> None:
    """Fit one trial's config into trials/<number>/ and tell the study how it ended."""
    from training.trainer import fit

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
    import torch

    from training.trainer import prepare

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


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")) if not math.isfinite(value) \
            else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are valid in a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {value!r} to TOML")


def config_toml(config: RunConfig, header: str = "") -> str:
    """The config as a TOML file that load_config reads back to an equal config."""
    data = config.to_dict()
    data.pop("search")
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if k not in TOML_SECTIONS]
    for section in TOML_SECTIONS:
        if data[section]:
            lines += ["", f"[{section}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data[section].items()]
    text = "\n".join(lines) + "\n"
    assert RunConfig.from_dict(tomllib.loads(text)) == dataclasses.replace(config, search={}), "TOML round trip"
    return text


def write_plots(study: optuna.Study, plots: Path) -> dict[str, str]:
    """Optuna's optimization history, intermediate values and parameter importances as PNGs.

    Returns {plot name: why it was not drawn} for the plots the study cannot give yet."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    plots.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    skipped = {}
    makers = {
        "optimization_history": vis.plot_optimization_history,
        "intermediate_values": vis.plot_intermediate_values,
        "param_importances": lambda s: vis.plot_param_importances(s, evaluator=FanovaImportanceEvaluator(seed=0)),
    }
    for name, make in makers.items():
        if name == "param_importances" and len(complete) < 2:
            skipped[name] = f"needs at least 2 completed trials, the study has {len(complete)}"
            continue
        try:
            with _quiet_optuna():
                ax = make(study)
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter varies among the completed trials
            skipped[name] = str(exc)
            continue
        if name == "intermediate_values":  # a legend entry per trial buries the plot; losses span decades
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            if all(v > 0 for t in study.trials for v in t.intermediate_values.values()):
                ax.set_yscale("log")
        fig = ax.figure
        fig.set_size_inches(8, 4.5)
        fig.savefig(plots / f"{name}.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    return skipped


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


def _wait_for_running(study: optuna.Study, log: Callable[[str], None]) -> None:
    """Other processes on the storage may still run trials: wait for them (a dead one's fail after the grace)."""
    told = False
    while True:
        with _quiet_optuna():
            optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        if not told:
            log(f"waiting for {len(running)} trial(s) of other processes to finish")
            told = True
        time.sleep(1.0)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def write_report(out: Path, settings: TuneSettings, study: optuna.Study, summary: dict, skipped: dict) -> None:
    """report.md: the study, the best trial against the config as written, the test split, every trial."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): n for s in TrialState if (n := sum(t.state is s for t in trials))}
    workers = sorted({t.user_attrs.get("worker", "?") for t in trials})
    metric, best = settings.metric, summary["best"]
    lines = [f"# Tuning {settings.config.name}", "",
             f"Study `{settings.study}` in `{settings.storage}`: {len(trials)} trials "
             f"({', '.join(f'{n} {s}' for s, n in counts.items())}) from {len(workers)} worker process(es). "
             f"TPE sampling (seed {settings.sampler_seed}), {settings.pruner} pruner "
             f"(startup trials {settings.startup_trials}, warm-up epochs {settings.warmup_epochs}). "
             f"Objective: {metric} " + ("on the validation split " if settings.folds == 1 else
                                        f"averaged over {settings.folds}-fold cross-validation of the training and "
                                        f"validation rows ") + f"({'maximize' if settings.maximize else 'minimize'}); "
             f"trial 0 is the config as written when its values lie in the search space.", "",
             f"## Best trial: {best['number']}, {metric} {best['value']:.4f}", "",
             "| parameter | best | config as written |", "|---|---|---|"]
    base_values = summary["base_values"]
    for path, value in summary["best_values"].items():
        lines.append(f"| `{path}` | {_fmt(value)} | {_fmt(base_values.get(path))} |")
    headline = summary["headline_metric"]
    lines += ["", "## Test split", "",
              "Each config fitted once more from scratch (`best/`, `base/`) on the config's own split with a trial's "
              "number of torch threads" + (", so that each repeats its trial exactly" if settings.folds == 1 else
                                           " (its validation value is that split's, not the cross-validation mean)")
              + "; only these fits read the test split.",
              "", f"| config | test {headline} | {metric} |", "|---|---:|---:|"]
    for label, key in (("best trial", "best_fit"), ("config as written", "base_fit")):
        fit = summary[key]
        lines.append(f"| {label} | {fit[f'test_{headline}']:.4f} | {fit[metric]:.4f} |")
    lines += ["", "## Plots", ""]
    if settings.folds > 1:
        lines += ["The intermediate values are the first fold's epochs, the ones the pruner judged.", ""]
    for name in ("optimization_history", "intermediate_values", "param_importances"):
        lines.append(f"- {name.replace('_', ' ')}: " + (f"not drawn: {skipped[name]}" if name in skipped
                                                          else f"![{name}](plots/{name}.png)"))
    epochs = "epochs" if settings.folds == 1 else "epochs (all folds)"
    lines += ["", "## Trials", "", f"| # | state | {metric} | {epochs} | seconds | worker | params |",
              "|---:|---|---:|---:|---:|---|---|"]
    for t in trials:
        seconds = f"{t.duration.total_seconds():.1f}" if t.duration else "-"
        value = f"{t.value:.4f}" if t.value is not None else "-"
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        ran = t.user_attrs.get("epochs", len(t.intermediate_values))
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | {ran} | {seconds} | "
                     f"{t.user_attrs.get('worker', '-')} | {params} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def tune(config: RunConfig, out: Path, trials: int, storage: str | None = None, jobs: int = 1,
         metric: str | None = None, pruner: str = "median", startup_trials: int = 5, warmup_epochs: int | None = None,
         sampler_seed: int | None = None, study_name: str | None = None, quiet: bool = False,
         log: Callable[[str], None] = print, folds: int = 1) -> dict:
    """Search `config.search` with `jobs` worker processes until the study holds `trials` trials; write the best
    config, the report and the plots into `out`, fit the best config and the config as written; return summary.json.
    """
    from training.trainer import fit

    if not config.search:
        raise ValueError(f"config {config.name or '(flags)'} has no [search] table: nothing to tune "
                         f"(training/configs/digits-cnn.toml has one)")
    if config.arch == "gan":
        raise ValueError("tune does not search the GAN (arch 'gan'): its loop reports no validation metric per epoch")
    if trials < 1 or jobs < 1:
        raise ValueError(f"--trials and --jobs: expected at least 1, got {trials} and {jobs}")
    if folds < 1:
        raise ValueError(f"--folds: expected 1 (the config's validation split) or at least 2, got {folds}")
    if folds > 1:
        from training.trainer import prepare

        prepare(config, (0, folds))  # refuse a series, or more folds than rows, before any process starts
    if storage in ("sqlite://", "sqlite:///:memory:"):
        raise ValueError("--storage: an in-memory database is not shared between worker processes; name a file, "
                         "e.g. sqlite:///runs/study.db")
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
    with _quiet_optuna():
        storage_obj = open_storage(settings.storage)
        with budget_lock(settings.storage):  # one process creates the study and queues the config as written
            study = load_study(settings, storage_obj)
            if not study.get_trials(deepcopy=False):
                params = base_params(config)
                if params is not None:
                    study.enqueue_trial(params, user_attrs={"source": "config as written"})
                else:
                    log("the config as written lies outside its search space: it is not queued as trial 0")
    log(f"tuning {settings.study}: {trials} trials in {settings.storage}, {jobs} worker process(es), "
        f"objective {settings.metric} ({'maximize' if settings.maximize else 'minimize'})"
        + (f", the mean of {folds}-fold cross-validation" if folds > 1 else ""))
    if jobs == 1:
        run_worker(settings, 0, log)
    else:  # processes, not threads: torch on CPU holds the GIL too often for threads to train in parallel
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
    search_seconds = time.perf_counter() - started
    _wait_for_running(study, log)
    try:
        best = study.best_trial
    except ValueError:
        raise ValueError(f"no trial of study {settings.study!r} completed; their errors are in the study "
                         f"(user attribute 'error')") from None
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
    headline = best_summary["headline_metric"]
    summary = {
        "name": config.name, "study": settings.study, "storage": settings.storage, "metric": settings.metric,
        "folds": settings.folds,
        "direction": "maximize" if settings.maximize else "minimize", "trials": len(study.trials),
        "states": {s.name.lower(): sum(t.state is s for t in study.trials) for s in TrialState},
        "workers": sorted({t.user_attrs.get("worker", "?") for t in study.trials}),
        "best": {"number": best.number, "value": best.value, "params": best.params},
        "best_values": best_values, "base_values": current_values(config), "headline_metric": headline,
        "best_fit": best_summary["metrics"], "base_fit": base_summary["metrics"],
        "search_seconds": round(search_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(out, settings, study, summary, skipped)
    log(f"best trial {best.number}: {settings.metric} {best.value:.4f}  {json.dumps(best_values)}")
    log(f"test {headline}: best config {best_summary['metrics'][f'test_{headline}']:.4f}, config as written "
        f"{base_summary['metrics'][f'test_{headline}']:.4f}")
    return summary
