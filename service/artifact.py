"""nnserve's artifact contract, shared by training (writer) and service (reader): an optional layer over Triton's.

A model repository is Triton's: `<repo>/<name>/<version>/model.onnx`, with an optional `<repo>/<name>/config.pbtxt`
(service.modelconfig). nnserve's own artifacts add `metadata.json` beside model.onnx (labels, task, provenance and
the hash of every file), and the same metadata, less the `files` section (which hashes model.onnx and so cannot
live inside it), embedded in the ONNX file's metadata_props under `METADATA_PROP`. Standard library only, so
training can import it without loading the web stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from service.artifact_tensors import DATATYPES, INPUT_LIMITS, check_tensors  # noqa: F401 (re-exported)

SCHEMA_VERSION = 1
MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"
METADATA_PROP = "nnserve.metadata"  # key in ONNX metadata_props holding the embedded metadata JSON
TMP_PREFIX = ".tmp-"  # in-progress versions; readers skip every dot-folder
LOCK_FILENAME = ".publish.lock"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")  # positive integers without leading zeros, as Triton reads them

TASKS = ("multiclass", "binary", "regression", "forecasting", "anomaly", "generation")
REQUIRED_FIELDS = ("schema_version", "name", "version", "architecture", "task", "inputs", "outputs",
                   "preprocessing", "training", "export")
REQUIRED_TRAINING_FIELDS = ("dataset", "split", "seed", "metrics", "hyperparameters", "library_versions",
                            "created_at")
DATASET_SOURCES = ("bundled", "file", "folder")  # training.dataset_source: a library's dataset, a user's file or folder


class MetadataError(ValueError):
    """Metadata that breaks the contract; `problems` lists every failure as 'field: what is wrong'."""

    def __init__(self, problems: list[str], source: str = "metadata"):
        self.problems = problems
        super().__init__(f"{source} is invalid: " + "; ".join(problems))


def is_valid_name(name: str) -> bool:
    """True when `name` is safe as a model folder name (no dots first, no slashes, bounded length)."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def is_valid_version(version: str) -> bool:
    """True when `version` is the text of a positive integer version."""
    return isinstance(version, str) and VERSION_RE.fullmatch(version) is not None


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) and x for x in value)


def _check_preprocessing(preprocessing: dict, problems: list[str]) -> None:
    """The optional parts: `before_graph` (what a client does to raw data, as sentences) and `input_shapes`
    (input name -> what one sample of that input holds)."""
    before = preprocessing.get("before_graph")
    if "before_graph" in preprocessing and not _is_text_list(before):
        problems.append(f"preprocessing.before_graph: expected a list of non-empty strings, got {before!r:.80}")
    shapes = preprocessing.get("input_shapes")
    if "input_shapes" in preprocessing and (
            not isinstance(shapes, dict) or not all(isinstance(v, str) and v for v in shapes.values())):
        problems.append(f"preprocessing.input_shapes: expected an object of input name -> non-empty string, "
                        f"got {shapes!r:.80}")


def _check_features(features: Any, inputs: Any, problems: list[str]) -> None:
    """`features` names the columns of a single input [batch, F], in order: F names, each once."""
    if not _is_text_list(features) or not features:
        problems.append(f"features: expected a non-empty list of non-empty strings, got {features!r:.80}")
        return
    if len(set(features)) != len(features):
        twice = sorted({f for f in features if features.count(f) > 1})
        problems.append(f"features: {twice} appear more than once; expected each name once")
    shape = inputs[0].get("shape") if isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], dict) \
        else None
    if not isinstance(shape, list) or len(shape) != 2:
        problems.append(f"features: expected a model with one input of shape [batch, F], got inputs {inputs!r:.80}")
    elif shape[1] != len(features):
        problems.append(f"features: {len(features)} names, but input '{inputs[0].get('name')}' has shape {shape} "
                        f"(expected [batch, {len(features)}])")


def validate_metadata(meta: Any) -> list[str]:
    """Return every way `meta` breaks the contract, each naming its field; an empty list means valid."""
    if not isinstance(meta, dict):
        return [f"metadata: expected a JSON object, got {type(meta).__name__}"]
    problems = [f"{key}: required field is missing" for key in REQUIRED_FIELDS if key not in meta]
    if "schema_version" in meta and meta["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version: expected {SCHEMA_VERSION}, got {meta['schema_version']!r}")
    if "name" in meta and not is_valid_name(meta["name"]):
        problems.append(f"name: expected letters, digits, '.', '_' or '-' (1-128, not starting with "
                        f"'.', '_' or '-'), got {meta['name']!r:.80}")
    version = meta.get("version")
    if "version" in meta and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        problems.append(f"version: expected a positive integer, got {version!r}")
    if not isinstance(meta.get("architecture", ""), str) or meta.get("architecture") == "":
        problems.append(f"architecture: expected a non-empty string, got {meta.get('architecture')!r}")
    if "task" in meta and meta["task"] not in TASKS:
        problems.append(f"task: expected one of {list(TASKS)}, got {meta['task']!r}")
    for field in ("inputs", "outputs"):
        if field in meta:
            check_tensors(field, meta[field], problems)
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        problems.append(f"labels: expected a list of strings, got {labels!r:.80}")
    if meta.get("task") in ("multiclass", "binary") and not labels:
        problems.append(f"labels: required for task {meta['task']!r}")
    for field in ("preprocessing", "export"):
        if field in meta and not isinstance(meta[field], dict):
            problems.append(f"{field}: expected an object, got {type(meta[field]).__name__}")
    if isinstance(meta.get("preprocessing"), dict):
        _check_preprocessing(meta["preprocessing"], problems)
    if "features" in meta:
        _check_features(meta["features"], meta.get("inputs"), problems)
    training = meta.get("training")
    if "training" in meta:
        if not isinstance(training, dict):
            problems.append(f"training: expected an object, got {type(training).__name__}")
        else:
            problems += [f"training.{key}: required field is missing"
                         for key in REQUIRED_TRAINING_FIELDS if key not in training]
            source = training.get("dataset_source")
            if "dataset_source" in training and source not in DATASET_SOURCES:
                problems.append(f"training.dataset_source: expected one of {list(DATASET_SOURCES)}, got {source!r:.80}")
            metrics = training.get("metrics", {})
            if not isinstance(metrics, dict) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in metrics.values()):
                problems.append(f"training.metrics: expected an object of finite numbers, got {metrics!r:.80}")
    files = meta.get("files")
    if files is not None:
        if not isinstance(files, dict) or MODEL_FILENAME not in files:
            problems.append(f"files: expected an object with an entry for {MODEL_FILENAME}, got {files!r:.80}")
        else:
            for filename, entry in files.items():
                if not _is_safe_relative(filename) or filename == METADATA_FILENAME:
                    problems.append(f"files: {filename!r:.80} is not a file name inside the version folder")
                elif not isinstance(entry, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))) \
                        or not isinstance(entry.get("bytes"), int):
                    problems.append(f"files.{filename}: expected {{'sha256': <64 hex>, 'bytes': <int>}}, "
                                    f"got {entry!r:.80}")
    return problems


def _is_safe_relative(filename: Any) -> bool:
    parts = filename.split("/") if isinstance(filename, str) else []
    return bool(parts) and all(is_valid_name(part) for part in parts)


def check_metadata(meta: Any, source: str = "metadata") -> dict:
    """Return `meta` when valid, else raise MetadataError listing every problem."""
    problems = validate_metadata(meta)
    if problems:
        raise MetadataError(problems, source)
    return meta


def embedded_view(meta: dict) -> dict:
    """The part of the metadata that is embedded in model.onnx (everything but the file hashes)."""
    return {k: v for k, v in meta.items() if k != "files"}


def dumps(meta: dict) -> str:
    """Canonical JSON text for metadata (sorted keys, so equal metadata gives equal bytes)."""
    return json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unreadable(filename: str, exc: OSError) -> str:
    """`<filename>: cannot be read (<reason>)`: the reason without the absolute path, which clients must not see."""
    return f"{filename}: cannot be read ({exc.strerror or type(exc).__name__})"


def read_metadata(version_dir: Path) -> dict:
    """Read and validate `<version_dir>/metadata.json`. Its name and version are provenance: the folders name
    the model and the version, as in Triton, so a version folder copied by hand is still read."""
    path = Path(version_dir) / METADATA_FILENAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetadataError([f"{METADATA_FILENAME}: file is missing"], str(path)) from None
    except OSError as exc:  # a folder where the file should be, no permission: the reason, not the path
        raise MetadataError([unreadable(METADATA_FILENAME, exc)], str(path)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError([f"{METADATA_FILENAME}: not valid JSON ({exc})"], str(path)) from None
    problems = validate_metadata(meta)
    if not problems and "files" not in meta:
        problems.append("files: required in metadata.json (hash of model.onnx)")
    if problems:
        raise MetadataError(problems, str(path))
    return meta


def verify_model_bytes(meta: dict, data: bytes, filename: str = MODEL_FILENAME) -> list[str]:
    """Problems with `data` as the file `filename` that `meta` describes (size and hash)."""
    entry = meta["files"][filename]
    if len(data) != entry["bytes"]:
        return [f"{filename}: expected {entry['bytes']} bytes, found {len(data)} (cut short or replaced?)"]
    if sha256_bytes(data) != entry["sha256"]:
        return [f"{filename}: sha256 does not match metadata.json"]
    return []


def file_entries(files: dict[str, bytes]) -> dict[str, dict]:
    """The `files` section of metadata.json for the files of a version (all but metadata.json itself)."""
    return {name: {"sha256": sha256_bytes(data), "bytes": len(data)}
            for name, data in sorted(files.items()) if name != METADATA_FILENAME}


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write beside, fsync, then rename over `path`, so a reader sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_versions(model_dir: Path) -> list[int]:
    """Published versions of one model, ascending; in-progress (dot) folders and other names are ignored."""
    try:
        entries = list(os.scandir(model_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(e.name) for e in entries if e.is_dir() and is_valid_version(e.name))


def list_models(repo: Path) -> list[str]:
    """Model names in a repository, sorted; folders with invalid names (dot-folders too) are ignored."""
    try:
        entries = list(os.scandir(repo))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in entries if e.is_dir() and is_valid_name(e.name))


@contextlib.contextmanager
def _publish_lock(model_dir: Path) -> Iterator[None]:
    with open(model_dir / LOCK_FILENAME, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_version(repo: Path, name: str, build: Callable[[int], dict[str, bytes]],
                    model_files: Callable[[int], dict[str, bytes]] | None = None) -> tuple[int, Path]:
    """Publish the next version of `name` atomically and return (version, folder).

    `build(version)` returns the files of that version as {filename: bytes}; it must include model.onnx and
    metadata.json. They are written and fsynced into a dot-folder inside the model's folder, which is then
    renamed to the version number, so a reader sees either no version or a whole one. Publishers of the same
    model are serialised by a lock file, so two of them never race for one number. `model_files(version)`
    returns files of the model's own folder (Triton's config.pbtxt), each replaced atomically after the rename.
    """
    if not is_valid_name(name):
        raise ValueError(f"invalid model name {name!r}")
    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    with _publish_lock(model_dir):
        # Holding the lock, any in-progress folder is a leftover of a killed publisher.
        for entry in os.scandir(model_dir):
            if entry.name.startswith(TMP_PREFIX):
                (shutil.rmtree if entry.is_dir() else os.unlink)(entry.path)
        versions = list_versions(model_dir)
        version = (versions[-1] + 1) if versions else 1
        files = build(version)
        missing = {MODEL_FILENAME, METADATA_FILENAME} - set(files)
        if missing:
            raise ValueError(f"publish_version: build() did not return {sorted(missing)}")
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=model_dir))
        try:
            for filename, data in files.items():
                (tmp / filename).parent.mkdir(parents=True, exist_ok=True)  # e.g. plots/curves.png
                with open(tmp / filename, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o755)
            _fsync_dir(tmp)
            final = model_dir / str(version)
            os.rename(tmp, final)  # atomic on one filesystem; fails rather than replace an existing version
            _fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for filename, data in (model_files(version) if model_files else {}).items():
            write_file_atomically(model_dir / filename, data)
    return version, final
