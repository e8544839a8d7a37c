"""The zoo: the shipped models, each trained from its config in training/configs/, with a results table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from training.config import CONFIG_DIR, load_config
from training.runs import Summary
from training.tasks import get_task, higher_is_better

ZOO = ("digits-mlp", "digits-cnn", "digits-transformer", "breast-cancer-mlp", "diabetes-mlp", "co2-lstm",
       "sunspots-gru", "sunspots-rnn", "digits-autoencoder", "digits-gan", "fortunes-language", "fortunes-writer")
STREAMED = ("co2-lstm", "sunspots-gru", "sunspots-rnn")  # also published as <name>-stream, their step graphs
# Quality bars of the zoo on each model's test split (the headline metric, and extra ones where given).
TARGETS = {
    "digits-mlp": {"accuracy": 0.97}, "digits-cnn": {"accuracy": 0.98}, "digits-transformer": {"accuracy": 0.96},
    "breast-cancer-mlp": {"accuracy": 0.96, "roc_auc": 0.99}, "diabetes-mlp": {"r2": 0.45},
    "digits-autoencoder": {"roc_auc": 0.95}, "digits-gan": {"judge_accuracy": 0.80},
    "fortunes-language": {"accuracy": 0.99},  # characters: still below the TF-IDF baseline, 0.9948 (docs/text.md)
}


# Zoo models whose bar is a named baseline of their own: the headline must be at least as good as it on the test split
BASELINE_BARS = {"fortunes-writer": "char_5gram_kneser_ney"}


def target_met(name: str, summary) -> bool:
    """Whether a zoo run meets its bar (for series: beat every naive forecast on MAE).

    `summary` is a runs.Summary or a mapping with its task, metrics and baseline (a published model's)."""
    metrics = summary["metrics"]
    if get_task(summary["task"]).forecasts:
        return all(metrics["test_mae"] < value for value in summary["baseline"]["all"].values())
    if name in BASELINE_BARS:
        value, baseline = metrics[f"test_{summary['headline_metric']}"], summary["baseline"]["all"][BASELINE_BARS[name]]
        if not (value >= baseline if higher_is_better(summary["headline_metric"]) else value <= baseline):
            return False
    return all(metrics[f"test_{k}"] >= v for k, v in TARGETS.get(name, {}).items())


def table_rows(results: dict) -> list[list[str]]:
    """One row per model, in HEADER's columns: what `zoo` prints and writes to zoo.md (the README's table).

    Each result is a runs.Summary or a mapping with the same keys (a published model's metadata)."""
    rows = []
    for name, summary in results.items():
        config = load_config(CONFIG_DIR / f"{name}.toml")
        forecasts = get_task(summary["task"]).forecasts
        what = f"{config.arch}, {summary['task']}" + (f", horizon {config.data.get('horizon', 1)}" if forecasts else "")
        metric = summary["headline_metric"]
        extra = [f"{k} {summary['metrics'][f'test_{k}']:.4f}" for k in TARGETS.get(name, {}) if k != metric]
        baseline = summary.get("baseline")
        others = [f"{k} {v:.4g}" for k, v in (baseline or {}).get("all", {}).items()  # the naive forecasts
                  if k != baseline["name"] and forecasts]
        rows.append([name, what, metric + (f" ({', '.join(extra)})" if extra else ""),
                     f"{summary['metrics'][f'test_{metric}']:.4f}",
                     (baseline["name"] + (f" ({', '.join(others)})" if others else "")) if baseline else "-",
                     f"{baseline['value']:.4f}" if baseline else "-",
                     "yes" if target_met(name, summary) else "NO", f"{summary['train_seconds']:.0f}"])
    return rows


HEADER = ["model", "architecture, task", "metric", "value", "best baseline", "baseline value", "target met", "train s"]
NUMERIC = {"value", "baseline value", "train s"}


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---:" if h in NUMERIC else "---" for h in HEADER) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*HEADER), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def stream_names() -> list[str]:
    """The published names of the zoo's step graphs."""
    from training.stream import STREAM_SUFFIX

    return [f"{name}{STREAM_SUFFIX}" for name in STREAMED]


def _publish_stream(name: str, window, out: Path, models: Path, log: Callable[[str], None]) -> None:
    """Export, verify and publish the step graph of the zoo run out/<name> (`window`: its exported window graph)."""
    from training.publish import publish
    from training.stream import STREAM_SUFFIX
    from training.stream_export import export_stream

    exported, resolved, summary = export_stream(out / name, window)
    stream = f"{name}{STREAM_SUFFIX}"
    version, path = publish(exported, resolved, summary, stream, models)
    log(f"   published {stream} version {version} at {path} (max |step - window| "
        f"{exported.parity['stream']['max_scaled_diff']:.1e}, scaled)")


def run_zoo(out: Path, names: list[str] | None = None, log: Callable[[str], None] = print,
            quiet: bool = True, models: Path | None = None) -> dict[str, Summary]:
    """Train the zoo models (all, or `names`) into out/<name>/; write zoo.json and zoo.md; return summaries.

    With `models`, each run is also exported, verified and published there as the model's next version, and the
    runs in STREAMED also publish their step graphs as <name>-stream.
    """
    from training.texttasks import text_fit, text_publish
    from training.trainer import fit

    names = list(names or ZOO)
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        raise ValueError(f"unknown zoo model(s) {unknown}; the zoo is {list(ZOO)}")
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    started = time.perf_counter()
    for name in names:
        log(f"== {name}")
        config = load_config(CONFIG_DIR / f"{name}.toml")
        publish_text = text_publish(config.arch)  # strings in: trained and published by their own modules
        results[name] = (text_fit(config.arch) or fit)(config, out / name, log=log if not quiet else
                                                       (lambda _m: None), quiet=quiet)
        log(f"   {text_table(table_rows({name: results[name]})).splitlines()[-1]}")
        if models is not None and publish_text:
            publish_text(out / name, name, models, log)
        elif models is not None:
            from training.export import export_run
            from training.publish import publish

            exported, resolved, summary = export_run(out / name)
            version, path = publish(exported, resolved, summary, name, models, out / name)
            log(f"   published {name} version {version} at {path} (max |onnx - torch| "
                f"{exported.parity['max_abs_diff']:.1e})")
            if name in STREAMED:
                _publish_stream(name, exported, out, models, log)
    rows = table_rows(results)
    (out / "zoo.json").write_text(json.dumps({name: s.to_dict() for name, s in results.items()}, indent=2) + "\n")
    (out / "zoo.md").write_text(markdown_table(rows))
    log(text_table(rows))
    log(f"zoo trained in {time.perf_counter() - started:.0f} s; table in {out / 'zoo.md'}")
    return results
