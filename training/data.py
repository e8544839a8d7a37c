"""Datasets shipped inside scikit-learn, with deterministic, recorded train/validation/test splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Dataset:
    """Features `X` [N, F] (float32, raw units) and targets `y` [N]; `labels` name the classes."""

    name: str
    X: np.ndarray
    y: np.ndarray
    task: str
    labels: list[str] | None
    description: str


@dataclass
class Split:
    """Index arrays into a Dataset; `describe()` is what the artifact records about the split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    method: str

    def describe(self) -> dict:
        digest = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        return {"method": self.method, "seed": self.seed, "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "indices_sha256": digest.hexdigest()}


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Dataset("digits", bunch.data.astype(np.float32), bunch.target.astype(np.int64), "multiclass",
                   [str(c) for c in bunch.target_names],
                   "scikit-learn digits: 1797 images of 8x8 pixels, values 0-16, flattened to 64 features")


DATASETS: dict[str, Callable[[], Dataset]] = {"digits": _digits}


def load_dataset(name: str) -> Dataset:
    """Load a bundled dataset by name; an unknown name lists the valid ones."""
    try:
        return DATASETS[name]()
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid datasets are {sorted(DATASETS)}") from None


def split_dataset(data: Dataset, val: float, test: float, seed: int) -> Split:
    """Deterministic split: stratified by class for classification tasks, shuffled otherwise."""
    from sklearn.model_selection import train_test_split

    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"split: val and test must be fractions with val + test < 1, got {val} and {test}")
    index = np.arange(len(data.y))
    stratify = data.task in ("multiclass", "binary")
    rest, test_idx = train_test_split(index, test_size=test, random_state=seed,
                                      stratify=data.y if stratify else None)
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed,
                                          stratify=data.y[rest] if stratify else None)
    return Split(np.sort(train_idx), np.sort(val_idx), np.sort(test_idx), seed,
                 "stratified" if stratify else "shuffled")


def standardization(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of training features; constant features get std 1 (left centred only)."""
    mean = X.mean(axis=0).astype(np.float32)
    std = X.std(axis=0).astype(np.float32)
    std[std < 1e-6] = 1.0
    return mean, std
