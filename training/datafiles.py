"""Loaders for a user's own data files (CSV, .npz; a folder of images: training/imagefiles.py), as numpy arrays.

Every problem with a file raises DataFileError naming the file, the row/column or entry, and what was expected.
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from pathlib import Path

import numpy as np

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SHOW_CHARS = 40


class DataFileError(ValueError):
    """A user's data file that cannot be used; the message names the file, the row/column or entry, and what was expected."""


# ---------------------------------------------------------------- shared helpers


def _show(value: str) -> str:
    """A cell value for an error message: quoted, cut to 40 characters."""
    if len(value) > _SHOW_CHARS:
        return repr(value[:_SHOW_CHARS]) + f" (truncated, {len(value)} characters)"
    return repr(value)


def _existing_file(path: str | os.PathLike, kind: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: file not found (expected a {kind} file)")
    if not p.is_file():
        raise DataFileError(f"{p}: is not a regular file (expected a {kind} file)")
    return p


def _number(text: str) -> float | None:
    """The float that `text` spells (NaN/inf included), or None when it is empty or not a number."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------- CSV


def _read_csv(path: str | os.PathLike) -> tuple[Path, list[str], list[tuple[int, list[str]]]]:
    """(path, header names, [(row number, fields)]) of a comma-separated UTF-8 file; row 1 is the first line."""
    p = _existing_file(path, "CSV")
    records: list[tuple[int, list[str]]] = []
    row = 0
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            for row, fields in enumerate(csv.reader(f), start=1):
                if fields:  # a blank line: counted, like a spreadsheet shows it, but skipped
                    records.append((row, fields))
    except UnicodeDecodeError as exc:
        raise DataFileError(
            f"{p}: is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "expected a UTF-8 CSV file"
        ) from None
    except csv.Error as exc:
        raise DataFileError(f"{p}: row {row + 1}: not valid CSV ({exc})") from None
    except OSError as exc:
        raise DataFileError(f"{p}: cannot read the file ({exc.strerror or exc})") from None

    if not records or all(not "".join(fields).strip() for _, fields in records):
        raise DataFileError(f"{p}: the file is empty; expected a header row of column names and at least 2 data rows")
    header_row, raw_header = records[0]
    header = [name.strip() for name in raw_header]
    if all(_number(name) is not None for name in header):
        raise DataFileError(
            f"{p}: row {header_row} has no header: expected column names, found only numbers "
            f"{', '.join(_show(n) for n in raw_header[:5])}{', ...' if len(raw_header) > 5 else ''}; "
            "add a first row naming the columns"
        )
    for i, name in enumerate(header, start=1):
        if not name:
            raise DataFileError(
                f"{p}: row {header_row} (header): column {i} has no name; "
                "expected a name for every column"
            )
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataFileError(
                f"{p}: row {header_row} (header): column {name!r} appears more than once; "
                "expected unique names"
            )
        seen.add(name)

    rows = records[1:]
    for row, fields in rows:
        if len(fields) != len(header):
            raise DataFileError(
                f"{p}: row {row} has {len(fields)} field(s), expected {len(header)} as in the header ({_list(header)})"
            )
    if len(rows) < 2:
        raise DataFileError(f"{p}: expected at least 2 data rows below the header, found {len(rows)}")
    return p, header, rows


def _list(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _column_index(p: Path, header: list[str], name: str, role: str) -> int:
    if name not in header:
        raise DataFileError(f"{p}: {role} column {name!r} is not in the header; the columns are {_list(header)}")
    return header.index(name)


def _finite_cell(p: Path, row: int, column: str, text: str) -> float:
    """The value of one numeric cell, or DataFileError naming row, column and value."""
    value = _number(text)
    where = f"{p}: row {row}, column {column!r}"
    if value is None:
        if not text.strip():
            raise DataFileError(f"{where}: empty value, expected a number")
        raise DataFileError(f"{where}: expected a number, found {_show(text)}")
    if not math.isfinite(value):
        raise DataFileError(f"{where}: expected a finite number, found {_show(text.strip())}")
    if abs(value) > _FLOAT32_MAX:
        raise DataFileError(f"{where}: {_show(text.strip())} is outside the float32 range (about ±3.4e38)")
    return value


def load_csv_table(
    path: str | os.PathLike, target: str, features: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Feature columns and a target column of a CSV file with a header row -> (X float32 [N, F], y raw values [N], feature names)."""
    p, header, rows = _read_csv(path)
    t = _column_index(p, header, target, "target")
    if features is None:
        names = [name for name in header if name != target]
        if not names:
            raise DataFileError(f"{p}: the only column is the target {target!r}; expected at least one feature column")
    else:
        names = list(features)
        if not names:
            raise DataFileError(
                f"{p}: features is an empty list; "
                "expected at least one feature column (or None for all)"
            )
        for name in names:
            _column_index(p, header, name, "feature")
        if target in names:
            raise DataFileError(
                f"{p}: column {target!r} is both the target and a feature; "
                "expected it only as the target"
            )
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise DataFileError(f"{p}: feature column(s) {_list(twice)} listed more than once; expected each once")
    cols = [header.index(name) for name in names]

    X = np.empty((len(rows), len(cols)), dtype=np.float32)
    labels: list[str] = []
    for i, (row, fields) in enumerate(rows):
        for j, (c, name) in enumerate(zip(cols, names)):
            X[i, j] = _finite_cell(p, row, name, fields[c])
        label = fields[t].strip()
        if not label:
            raise DataFileError(
                f"{p}: row {row}, column {target!r}: "
                "empty target value, expected a number or a class label"
            )
        labels.append(label)

    values = [_number(label) for label in labels]
    if all(v is not None for v in values):
        for (row, _), label, v in zip(rows, labels, values):
            if not math.isfinite(v):
                raise DataFileError(
                    f"{p}: row {row}, column {target!r}: "
                    f"expected a finite number, found {_show(label)}"
                )
        y = np.asarray(values, dtype=np.float64)
    else:
        y = np.asarray(labels, dtype=str)
    return X, y, names


def csv_columns(path: str | os.PathLike) -> list[str]:
    """The column names in a CSV file's header row."""
    return _read_csv(path)[1]


def load_csv_series(path: str | os.PathLike, column: str | None = None) -> np.ndarray:
    """One numeric column of a CSV (the only column, or the named one) -> float32 [N], in file order."""
    p, header, rows = _read_csv(path)
    if column is None:
        if len(header) != 1:
            raise DataFileError(
                f"{p}: expected a single column when `column` is not given, found {len(header)}: {_list(header)}; "
                "pass column= to choose one"
            )
        column = header[0]
    c = _column_index(p, header, column, "series")
    return np.asarray([_finite_cell(p, row, column, fields[c]) for row, fields in rows], dtype=np.float32)


# ---------------------------------------------------------------- NPZ


def _npz_entry(p: Path, z, key: str) -> np.ndarray:
    if key not in z.files:
        raise DataFileError(
            f"{p}: no array {key!r}; "
            f"expected arrays 'X' and 'y', found {_list(sorted(z.files)) or 'none'}"
        )
    try:
        a = z[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataFileError(
                f"{p}: array {key!r} is an object (pickled) array, which is refused; expected a numeric array"
            ) from None
        raise DataFileError(f"{p}: array {key!r} cannot be read ({exc}); expected a .npy array") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{p}: array {key!r} cannot be read ({exc}); the file looks damaged") from None
    if not isinstance(a, np.ndarray):  # a zip member without the .npy header comes back as raw bytes
        raise DataFileError(f"{p}: entry {key!r} is not a .npy array; expected a file written by np.savez")
    return a


def _first_bad(a: np.ndarray, bad: np.ndarray, name: str) -> str:
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{name}[{', '.join(map(str, index))}] = {a[index].item()!r}"


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An .npz with arrays X [N, ...] and y [N] -> (X float32, y)."""
    p = _existing_file(path, ".npz")
    if not zipfile.is_zipfile(p):
        raise DataFileError(f"{p}: not a valid .npz file (expected a zip archive of .npy arrays, as np.savez writes)")
    try:
        z = np.load(p, allow_pickle=False)  # never unpickle a user's file
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{p}: not a valid .npz file ({exc}); expected a zip archive of .npy arrays") from None
    with z:
        X = _npz_entry(p, z, "X")
        y = _npz_entry(p, z, "y")

    if X.dtype.kind not in "biuf":
        raise DataFileError(f"{p}: array 'X' has dtype {X.dtype}; expected numbers (bool, integer or float)")
    if y.dtype.kind not in "biufUS":
        raise DataFileError(f"{p}: array 'y' has dtype {y.dtype}; expected numbers or strings")
    if X.ndim < 2:
        raise DataFileError(f"{p}: array 'X' has shape {X.shape}; expected [N, ...] with at least 2 dimensions")
    if y.ndim != 1:
        raise DataFileError(f"{p}: array 'y' has shape {y.shape}; expected one dimension [N]")
    if X.size == 0 or y.size == 0:
        raise DataFileError(
            f"{p}: arrays are empty (X {X.shape}, y {y.shape}); "
            "expected at least one sample with values"
        )
    if len(X) != len(y):
        raise DataFileError(f"{p}: X has {len(X)} samples but y has {len(y)}; expected the same number N")

    _require_finite(p, "X", X)
    with np.errstate(over="ignore"):  # overflow is reported below, naming the entry
        X32 = X.astype(np.float32)
    bad = ~np.isfinite(X32)
    if bad.any():
        raise DataFileError(f"{p}: array 'X' has values outside the float32 range, first {_first_bad(X, bad, 'X')}")
    _require_finite(p, "y", y)
    return X32, y


def _require_finite(p, name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise DataFileError(
                f"{p}: array '{name}' has {int(bad.sum())} non-finite value(s) (NaN or inf), "
                f"first {_first_bad(array, bad, name)}; "
                "expected finite numbers"
            )
