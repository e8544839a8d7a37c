"""Datasets: the ones shipped inside scikit-learn and statsmodels and a user's own files, with deterministic,
recorded train/validation/test splits, and the arrangement of features into the form an architecture takes.

Four kinds: `table` (X [N, F]), `image` (X [N, C, H, W]), `series` (one series [N], cut into sliding windows of
`window` past values and the `horizon` values that follow; split by time) and `text` (str [N]; training/textdata.py).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from service.artifact import DATASET_SOURCES
from training import textdata

FORMS = ("table", "image", "sequence")  # what an architecture takes: [B, F], [B, C, H, W] or [B, T, F]


SOURCES = DATASET_SOURCES  # where a dataset comes from: shipped with a library, a user's file or folder


@dataclass
class Dataset:
    """Features in raw units and targets; `labels` name the classes; `season` is a series' period.

    `name` is what a published model records: a bundled dataset's name ("wine"), a user file's name with its
    extension ("wine.csv"), a user folder's name with a trailing slash ("pets/"); never the directories above it.
    `features` names a table's columns in input order. `loading` lists, as plain sentences, what was done to the
    raw data before it reached the arrays in X (decoding, color conversion, resizing, pixel scale), so that a
    client can do the same.
    """

    name: str
    kind: str  # table, image, series or text
    task: str  # the default task; a config may pick another one the data supports
    X: np.ndarray  # table [N, F], image [N, C, H, W], series [N] (float32)
    y: np.ndarray | None  # class indices (int64) or values (float32); None for a series
    labels: list[str] | None
    description: str
    season: int | None = None
    source: str = "bundled"  # one of SOURCES
    features: list[str] | None = None
    loading: list[str] = field(default_factory=list)
    sample: str = ""  # one sample as X holds it, e.g. "a grayscale image of 32x32 pixels, values 0-255"


@dataclass
class Split:
    """Index arrays into a Dataset (for a series: into its windows); `describe()` goes into the artifact."""

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


# -- bundled datasets -------------------------------------------------------------------------------------
def _sklearn(loader: str, task: str, description: str) -> Callable[[], Dataset]:
    def load() -> Dataset:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{loader}")()
        features = [str(f) for f in bunch.feature_names]
        loading = [f"the {len(features)} features of scikit-learn's load_{loader}() in its order (see `features`), "
                   "in their own units, as float32"]
        sample = f"{len(features)} features in their own units"
        if "target_names" not in bunch:  # values (diabetes), not classes
            return Dataset(loader, "table", task, bunch.data.astype(np.float32), bunch.target.astype(np.float32),
                           None, description, features=features, loading=loading, sample=sample)
        return Dataset(loader, "table", task, bunch.data.astype(np.float32), bunch.target.astype(np.int64),
                       [str(c) for c in bunch.target_names], description, features=features, loading=loading,
                       sample=sample)

    return load


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Dataset("digits", "image", "multiclass", bunch.images.astype(np.float32)[:, None], bunch.target.astype(np.int64),
                   [str(c) for c in bunch.target_names],
                   "scikit-learn digits: 1797 grayscale images of 8x8 pixels, values 0-16",
                   loading=["scikit-learn's load_digits() images: grayscale, 8x8 pixels, values 0-16 (not scaled), "
                            "as float32 [C, H, W] = [1, 8, 8]"],
                   sample="a grayscale image of 8x8 pixels, values 0-16")


def _statsmodels_series(name: str, column: str, season: int, description: str) -> Callable[[], Dataset]:
    def load() -> Dataset:
        import importlib

        with warnings.catch_warnings():  # statsmodels' loaders warn about pandas internals
            warnings.simplefilter("ignore")
            frame = importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data
        values = frame[column].interpolate().to_numpy(dtype=np.float32)  # co2 has 59 missing weeks
        return Dataset(name, "series", "forecasting", values, None, None, description, season=season,
                       loading=[f"statsmodels' {name} column {column!r} in time order, in its own units, as float32"],
                       sample="values of the series in its own units")

    return load


DATASETS: dict[str, Callable[[], Dataset]] = {
    "digits": _digits,
    "iris": _sklearn("iris", "multiclass", "scikit-learn iris: 150 flowers, 4 measurements in cm, 3 species"),
    "wine": _sklearn("wine", "multiclass", "scikit-learn wine: 178 wines, 13 chemical measurements, 3 cultivars"),
    "breast_cancer": _sklearn("breast_cancer", "binary",
                              "scikit-learn breast cancer (Wisconsin): 569 tumours, 30 features; "
                              "positive class 'benign'"),
    "diabetes": _sklearn("diabetes", "regression",
                         "scikit-learn diabetes: 442 patients, 10 features, disease progression after one year"),
    "co2": _statsmodels_series("co2", "co2", 52, "statsmodels co2: weekly Mauna Loa CO2 in ppm, 1958-2001 "
                               "(missing weeks interpolated)"),
    "sunspots": _statsmodels_series("sunspots", "SUNACTIVITY", 11,
                                    "statsmodels sunspots: yearly sunspot activity, 1700-2008"),
}


def text_dataset(corpus: textdata.TextCorpus) -> Dataset:
    """A Dataset of kind `text` (X: str [N])."""
    return Dataset(corpus.name, "text", "multiclass", np.array(corpus.texts + [None], dtype=object)[:-1], corpus.y,
                   corpus.classes, corpus.description, source=corpus.source, sample="a UTF-8 string",
                   loading=["runs of whitespace (newlines, tabs) become one space; ends stripped"])


def load_dataset(name: str, options: dict | None = None) -> Dataset:
    """A bundled dataset by name, or a user's file or folder (.csv, .npz, a folder of class folders)."""
    if name in DATASETS:
        return DATASETS[name]()
    if textdata.is_text_source(name, options or {}):  # `fortunes`, a CSV with data.text, class folders of .txt
        return text_dataset(textdata.load_corpus(name, options or {}))
    path = Path(name)
    if path.suffix.lower() in (".csv", ".npz") or path.is_dir():
        return load_user_dataset(path, options or {})
    raise ValueError(f"unknown dataset {name!r}; valid datasets are {sorted([*DATASETS, *textdata.TEXT_DATASETS])}, "
                     "or a path to a .csv, a .npz or a folder of class folders")


def dataset_label(dataset: str) -> str:
    """A short, filesystem-safe name for a dataset, for run folders: a bundled dataset's name ("wine"), a file's
    stem and kind ("wine-csv" for data/wine.csv), a folder's own name ("pets" for /data/pets/)."""
    if dataset in DATASETS or dataset in textdata.TEXT_DATASETS:
        return dataset
    path = Path(dataset)
    if path.suffix.lower() in (".csv", ".npz"):
        label = f"{path.stem}-{path.suffix[1:].lower()}"
    else:
        label = path.name or Path(dataset).resolve().name
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip(".-_")[:64].strip(".-_")
    return label or "data"


def load_user_dataset(path: Path, options: dict) -> Dataset:
    """A user's data: CSV (feature columns and a `target`, or one `series` column), NPZ (X, y), image folders.

    The dataset is named by the file's or folder's own name, never by the directories above it."""
    from training import datafiles, imagefiles

    task = options.get("task")
    if path.suffix.lower() == ".csv":
        if "target" not in options:  # a series: the named column, or the file's only one
            columns = datafiles.csv_columns(path)
            if options.get("series") is None and len(columns) != 1:
                raise ValueError(f"{path}: has columns {columns}; say which is the target with data.target=NAME, "
                                 "or which holds a series with data.series=NAME")
            column = options.get("series") or columns[0]
            values = datafiles.load_csv_series(path, options.get("series"))
            return Dataset(path.name, "series", "forecasting", values, None, None, f"series from {path.name}",
                           season=options.get("season"), source="file",
                           loading=[f"column {column!r} of {path.name} in file order, in its own units, as float32"],
                           sample="values of the series in its own units")
        X, y, features = datafiles.load_csv_table(path, options["target"], options.get("features"))
        data = _table_from_targets(path, X, y, task, f"{path.name}: features {features}")
        data.features = list(features)
        data.loading = [f"the {len(features)} columns of {path.name} in the order of `features`, in their own units, "
                        "as float32"]
        data.sample = f"{len(features)} features in their own units"
        return data
    if path.suffix.lower() == ".npz":
        X, y = datafiles.load_npz(path)
        kind = "image" if X.ndim == 4 else "table"
        if X.ndim not in (2, 4):
            raise ValueError(f"{path}: X must be [N, F] or [N, C, H, W], got shape {list(X.shape)}")
        data = _table_from_targets(path, X, y, task, f"{path.name}: X {list(X.shape)}")
        data.kind = kind
        data.loading = [f"array X of {path.name} as float32, shape {list(X.shape[1:])} per sample, as stored"]
        data.sample = f"an array of shape {list(X.shape[1:])} with X's values as stored"
        return data
    folder = imagefiles.read_image_folder(path, options.get("image_size"), options.get("color", "grayscale"))
    name = f"{folder_name(path)}/"
    return Dataset(name, "image", task or "multiclass", folder.X, folder.y, folder.classes,
                   f"{len(folder.X)} {folder.color} images of {folder.size}x{folder.size} pixels in "
                   f"{len(folder.classes)} class folders of {name}", source="folder", loading=image_loading(folder),
                   sample=f"a{'n RGB' if folder.color == 'rgb' else ' grayscale'} image of {folder.size}x{folder.size} "
                          "pixels, values 0-255")


def folder_name(path: Path) -> str:
    """A folder's own name, also for '.' or a path ending in a slash."""
    return path.name or path.resolve().name or "data"


def image_loading(folder) -> list[str]:
    """The steps that turned a folder's image files (an imagefiles.ImageFolder) into X, as sentences a client can
    follow."""
    side, channels = folder.size, folder.X.shape[1]
    sizes = ", ".join(f"{w}x{h}" for w, h in sorted(folder.sizes))
    color = ("convert to grayscale (PIL mode 'L': L = 0.299 R + 0.587 G + 0.114 B)" if folder.color == "grayscale"
             else "convert to RGB (PIL mode 'RGB'; an alpha channel is dropped)")
    resize = (f"resize from {sizes} (width x height) to {side}x{side} pixels with PIL's bilinear filter "
              "(data.image_size)" if folder.resized
              else f"no resize: every training image was {side}x{side} pixels, their own size (resize other "
                   f"images to {side}x{side})")
    return ["decode the PNG/JPEG file and turn it upright by its EXIF orientation", color, resize,
            "keep pixel values 0-255 as float32 (no division by 255)",
            f"channels first: [C, H, W] = [{channels}, {side}, {side}]"]


def _table_from_targets(path: Path, X: np.ndarray, y: np.ndarray, task: str | None, description: str) -> Dataset:
    """Decide the task from the targets (strings or few integers: classes; else regression) unless given."""
    numeric = y.dtype.kind in "iuf"
    if task is None:
        integral = numeric and np.all(np.equal(np.mod(y, 1), 0))
        n_classes = len(np.unique(y))
        task = ("binary" if n_classes == 2 else "multiclass") if (not numeric or (integral and n_classes <= 50)) \
            else "regression"
    from training.tasks import TASKS

    kind = TASKS.get(task)  # an unknown name is refused with the architecture's tasks (training.prepare)
    if kind is not None and kind.scales_targets:  # values, not classes
        if not numeric:
            raise ValueError(f"{path}: task {task} needs numeric targets")
        return Dataset(path.name, "table", task, X.astype(np.float32), y.astype(np.float32), None, description,
                       source="file")
    classes, index = np.unique(y, return_inverse=True)
    labels = [str(int(c)) if numeric and float(c).is_integer() else str(c) for c in classes]
    if kind is not None and kind.num_classes is not None and len(labels) != kind.num_classes:
        raise ValueError(f"{path}: task {task} needs exactly {kind.num_classes} classes, found {len(labels)}: "
                         f"{labels[:10]}")
    return Dataset(path.name, "table", task, X.astype(np.float32), index.astype(np.int64), labels, description,
                   source="file")


# -- splits -----------------------------------------------------------------------------------------------
def split_indices(n: int, y: np.ndarray | None, val: float, test: float, seed: int, stratify: bool) -> Split:
    """Deterministic random split: stratified by class when asked."""
    from sklearn.model_selection import train_test_split

    _check_fractions(val, test)
    index = np.arange(n)
    rest, test_idx = train_test_split(index, test_size=test, random_state=seed, stratify=y if stratify else None)
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed,
                                          stratify=y[rest] if stratify else None)
    return Split(np.sort(train_idx), np.sort(val_idx), np.sort(test_idx), seed,
                 "stratified" if stratify else "shuffled")


def fold_split(split: Split, y: np.ndarray | None, fold: int, folds: int, stratify: bool) -> Split:
    """Fold `fold` (0-based) of a `folds`-fold cross-validation over the training and validation rows of `split`:
    that fold validates and the others train. The test rows stay out of it, so a search never reads them."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if not (folds >= 2 and 0 <= fold < folds):
        raise ValueError(f"folds: expected at least 2 folds and 0 <= fold < folds, got fold {fold} of {folds}")
    rest = np.sort(np.concatenate([split.train, split.val]))
    splitter = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True, random_state=split.seed)
    train_pos, val_pos = list(splitter.split(rest, y[rest] if stratify else None))[fold]
    return Split(rest[train_pos], rest[val_pos], split.test, split.seed,
                 f"{split.method}, cross-validation fold {fold + 1} of {folds}")


def split_by_time(n_windows: int, val: float, test: float, seed: int) -> Split:
    """Windows in time order: the first for training, then validation, the latest for test."""
    _check_fractions(val, test)
    n_test, n_val = max(1, round(n_windows * test)), max(1, round(n_windows * val))
    index = np.arange(n_windows)
    return Split(index[:n_windows - n_val - n_test], index[n_windows - n_val - n_test:n_windows - n_test],
                 index[n_windows - n_test:], seed, "by time")


def _check_fractions(val: float, test: float) -> None:
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"split: val and test must be fractions with val + test < 1, got {val} and {test}")


def windows(series: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows: inputs [N, window] of past values and targets [N, horizon] of the values after them."""
    n = len(series) - window - horizon + 1
    if n < 10:
        raise ValueError(f"series of {len(series)} values is too short for window {window} and horizon {horizon}")
    stacked = np.lib.stride_tricks.sliding_window_view(series, window + horizon)[:n]
    return np.ascontiguousarray(stacked[:, :window]), np.ascontiguousarray(stacked[:, window:])


# -- arrangement ------------------------------------------------------------------------------------------
def arrange(data: Dataset, form: str) -> np.ndarray:
    """The features as an architecture takes them: table [N, F], image [N, C, H, W] or sequence [N, T, F].

    Images become sequences row by row (each of the H rows is one token of C*W values); a series is
    windowed by the caller and handled as a sequence of one feature per step.
    """
    X = data.X
    if form == "table":
        return X.reshape(len(X), -1)
    if form == "image":
        if data.kind != "image":
            raise ValueError(f"dataset {data.name!r} holds {data.kind} data; this architecture needs images")
        return X
    if form == "sequence":
        if data.kind == "image":
            n, c, h, w = X.shape
            return np.ascontiguousarray(X.transpose(0, 2, 1, 3).reshape(n, h, c * w))
        raise ValueError(f"dataset {data.name!r} holds {data.kind} data; sequence architectures take images "
                         "(rows as tokens) or series")
    raise ValueError(f"unknown input form {form!r}; valid forms are {list(FORMS)}")


def standardization(X: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray]:
    """Training-split statistics, broadcastable to the inputs: per feature for tables and token features,
    one value per channel for images. Constant features get std 1 (centred only)."""
    if form == "image":
        axes, keep = (0, 2, 3), (slice(None), None, None)
    elif X.ndim == 3:
        axes, keep = (0, 1), (slice(None),)
    else:
        axes, keep = (0,), (slice(None),)
    mean = X.mean(axis=axes).astype(np.float32)
    std = X.std(axis=axes).astype(np.float32)
    std[std < 1e-6] = 1.0
    return mean[keep], std[keep]
