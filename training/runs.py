"""The run folder: its files, their typed contents, checkpoints and the epoch history.

A run folder holds:
  config.json      the resolved RunConfig, plus the network's full hyperparameters and the data facts (`Resolved`)
  metrics.jsonl    one JSON line per epoch
  best.pt          state_dict of the best epoch by the monitored validation metric (weights_only=True)
  last.pt          everything to resume: weights, optimizer, schedule, RNG states, early-stopping state
  summary.json     split, test metrics, baseline, library versions, timings (`Summary`)
  plots/*.png      loss and metric curves, and the task's own plot
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.config import RunConfig
from training.tasks import get_task

RESOLVED_EXTRAS = ("network", "resolved_task", "form", "series", "labels", "config_sha256")  # config.json only


@dataclass
class Resolved:
    """config.json: the run's config, the architecture's full hyperparameters, and what the data decided."""

    config: RunConfig
    network: dict  # the architecture's config fields, the data's sizes included
    resolved_task: str
    form: str  # table, image or sequence
    series: bool
    labels: list[str] | None
    config_sha256: str

    @classmethod
    def of(cls, config: RunConfig, prepared, hyper: dict) -> "Resolved":
        return cls(config, hyper, prepared.task, prepared.form, prepared.data.kind == "series", prepared.labels,
                   config.sha256())

    def to_dict(self) -> dict:
        return {**self.config.to_dict(), **{key: getattr(self, key) for key in RESOLVED_EXTRAS}}

    @classmethod
    def from_dict(cls, data: dict) -> "Resolved":
        config = RunConfig.from_dict({k: v for k, v in data.items() if k not in RESOLVED_EXTRAS})
        return cls(config, **{key: data[key] for key in RESOLVED_EXTRAS})

    def write(self, out: Path) -> None:
        (out / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class Summary:
    """summary.json: what a finished run measured. Reads like the file too (`summary["metrics"]`)."""

    name: str
    dataset: str
    dataset_source: str
    dataset_description: str
    task: str
    split: dict
    seed: int
    best_epoch: int
    epochs_run: int
    headline_metric: str
    metrics: dict[str, float]  # test_* metrics of the best epoch, then its val_* metrics
    baseline: dict | None  # the best classic baseline: {"name", "value", "all"}
    library_versions: dict[str, str]
    train_seconds: float
    created_at: str
    distributed: dict | None = None  # world size, backend, and the replica check (training/distributed.py)

    @property
    def headline(self) -> float:
        """The headline test metric's value."""
        return self.metrics[f"test_{self.headline_metric}"]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if not self.distributed:
            del data["distributed"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Summary":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"dataset_source": "bundled", **{k: v for k, v in data.items() if k in fields}})

    def write(self, out: Path) -> None:
        (out / "summary.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)


def library_versions() -> dict[str, str]:
    import sklearn

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}


def make_summary(config: RunConfig, prepared, state: dict, test: dict, val: dict, baseline: dict | None,
                 started: float, distributed: dict | None = None) -> Summary:
    """The summary of a finished run; `started` is its time.perf_counter() at the start."""
    data = prepared.data
    return Summary(
        name=config.name, dataset=data.name, dataset_source=data.source, dataset_description=data.description,
        task=prepared.task, split=prepared.split.describe(), seed=config.seed, best_epoch=state["best_epoch"],
        epochs_run=state["epoch"], headline_metric=get_task(prepared.task).metric,
        metrics={**{f"test_{k}": v for k, v in test.items()}, **val}, baseline=baseline,
        library_versions=library_versions(), train_seconds=round(time.perf_counter() - started, 3),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), distributed=distributed)


def format_result(summary: Summary) -> str:
    metric = summary.headline_metric
    line = f"{summary.name}: test {metric} {summary.headline:.4f}"
    if summary.baseline:
        line += f"  (best baseline {summary.baseline['name']}: {summary.baseline['value']:.4f})"
    return line


def save_checkpoint(obj, path: Path) -> None:
    """torch.save beside, then rename: a run killed mid-write keeps its previous checkpoint whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_rows(out: Path) -> list[dict]:
    """Every epoch row of metrics.jsonl."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_history(out: Path, last_epoch: int) -> list[dict]:
    """Epoch rows already written, up to `last_epoch` (a killed run may have written one more)."""
    if last_epoch == 0 or not (out / "metrics.jsonl").exists():
        return []
    return [r for r in read_rows(out) if r["epoch"] <= last_epoch]


def read_run(run_dir: Path) -> tuple[Resolved, Summary]:
    """config.json and summary.json of a finished run."""
    run_dir = Path(run_dir)
    try:
        resolved = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{run_dir} is not a finished run folder: {Path(exc.filename).name} is missing") from None
    return Resolved.from_dict(resolved), Summary.from_dict(summary)


def load_trained(run_dir: Path) -> tuple[Resolved, Summary, nn.Module]:
    """(config.json, summary.json, the best network in eval mode) of a finished run."""
    resolved, summary = read_run(run_dir)
    state = torch.load(Path(run_dir) / "best.pt", weights_only=True)
    return resolved, summary, get_task(resolved.resolved_task).load_network(resolved, state)


def config_of(resolved: Resolved) -> RunConfig:
    """The RunConfig inside a resolved config.json."""
    return resolved.config
