"""The report of `tune`: Optuna's plots and report.md."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from training.tune_study import TuneSettings, _quiet_optuna


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


def wait_for_running(study: optuna.Study, log: Callable[[str], None]) -> None:
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


