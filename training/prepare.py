"""A run's data exactly as training and export see it: loaded, arranged for the architecture, split, standardized."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training import architectures
from training.config import RunConfig
from training.data import (Dataset, Split, arrange, fold_split, load_dataset, split_by_time, split_indices,
                           standardization, windows)
from training.network import series_scaling
from training.tasks import get_task

PARTS = ("train", "val", "test")


@dataclass
class Prepared:
    """The data of a run exactly as training and export see it: arranged, split, with its statistics."""

    data: Dataset
    task: str
    form: str
    split: Split
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray | None]
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float | None = None
    y_std: float | None = None
    window: int | None = None
    horizon: int | None = None
    scaling: str | None = None  # a series' input scaling (training.network.SCALINGS)

    @property
    def labels(self) -> list[str] | None:
        return self.data.labels


def resolve_task(config: RunConfig, data: Dataset) -> str:
    """The run's task: the config's, else the architecture's own, else the dataset's; checked against both."""
    spec = architectures.get_arch(config.arch)
    name = config.task or spec.default_task or data.task
    if name not in spec.tasks:
        raise ValueError(f"architecture {config.arch!r} does not do task {name!r}; it does {list(spec.tasks)}")
    task = get_task(name)
    if data.kind == "series" and not task.forecasts:
        raise ValueError(f"dataset {data.name!r} is a series; its task is forecasting, not {name!r}")
    if task.needs_labels and not data.labels:
        raise ValueError(f"task {name!r} needs classes, and dataset {data.name!r} has none")
    return name


def _prepare_series(config: RunConfig, data: Dataset, task: str, form: str, fold) -> Prepared:
    """Sliding windows of a series, split by time; scaled by the spread of the training steps."""
    if form != "sequence":
        raise ValueError(f"dataset {data.name!r} is a series; use a sequence architecture (rnn, lstm, gru, "
                         f"transformer), not {config.arch!r}")
    if fold is not None:
        raise ValueError(f"folds: dataset {data.name!r} is a series, validated on the windows after the training "
                         f"ones; shuffled k-fold cross-validation would train on its future")
    window, horizon = int(config.data.get("window", 24)), int(config.data.get("horizon", 1))
    scaling = series_scaling(config.data)
    inputs, targets = windows(data.X, window, horizon)
    split = split_by_time(len(inputs), config.split.val, config.split.test, config.seed)
    X = {p: inputs[getattr(split, p)] for p in PARTS}
    y = {p: targets[getattr(split, p)] for p in PARTS}
    train_values = data.X[:split.train[-1] + window + horizon]
    std = np.float32(max(float(np.diff(train_values).std()), 1e-6))  # scale of steps, not of levels
    return Prepared(data, task, form, split, X, y, np.float32(0.0), std, window=window, horizon=horizon,
                    scaling=scaling)


def prepare(config: RunConfig, fold: tuple[int, int] | None = None) -> Prepared:
    """Load, arrange and split the data of a run (deterministic: the seed and the config decide).

    `fold=(k, K)`: fold k of a K-fold cross-validation over the config's training and validation rows validates,
    the other folds train (tune's --folds); the test split is the config's own."""
    data = load_dataset(config.dataset, {**config.data, **({"task": config.task} if config.task else {})})
    name = resolve_task(config, data)
    task = get_task(name)
    form = architectures.input_form(config.arch, config.model)
    if data.kind == "series":
        return _prepare_series(config, data, name, form, fold)
    features = arrange(data, form)
    split = split_indices(len(features), data.y, config.split.val, config.split.test, config.seed,
                          stratify=task.stratify)
    if fold is not None:
        split = fold_split(split, data.y, *fold, stratify=task.stratify)
    X = {p: features[getattr(split, p)] for p in PARTS}
    y = {p: data.y[getattr(split, p)] for p in PARTS}
    x_mean, x_std = standardization(X["train"], form)
    prepared = Prepared(data, name, form, split, X, y, x_mean, x_std)
    if task.scales_targets:
        prepared.y_mean, prepared.y_std = float(y["train"].mean()), float(y["train"].std()) or 1.0
    return prepared
