"""Run configuration: a TOML file per zoo model, command-line flags, and `--set section.key=value` overrides."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class OptimizerConfig:
    name: str = "adam"  # sgd, adam, adamw, rmsprop
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 penalty (decoupled for adamw)
    momentum: float = 0.9  # sgd and rmsprop only
    nesterov: bool = False  # sgd only


@dataclass
class ScheduleConfig:
    name: str = "none"  # none, step, cosine, plateau
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.5  # step: decay factor
    factor: float = 0.5  # plateau: decay factor
    patience: int = 5  # plateau: epochs without improvement of the monitored metric


@dataclass
class TrainConfig:
    batch_size: int = 64
    epochs: int = 50
    patience: int = 0  # early stopping: epochs without a better monitored metric; 0 = never stop early
    monitor: str = "val_loss"  # the validation metric that picks the best checkpoint and drives early stopping
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping
    checkpoint_seconds: float = 10.0  # write last.pt/best.pt at most this often, and at the end; 0 = every epoch


OPERATIONAL = (("train", "checkpoint_seconds"),)  # (section, key): left out of RunConfig.sha256

# The search space of `python -m training tune`: a table of dotted config paths, each with a distribution.
SEARCH_TYPES = {
    "float": {"low", "high", "log", "step"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
    "widths": {"low", "high", "log", "step", "layers"},  # a list of ints: its length and each width are searched
}
FREE_SECTIONS = ("data", "model", "eval")  # free-form tables: their keys are checked when a run builds them
TOP_LEVEL = ("name", "arch", "dataset", "task", "seed")  # the single values of a config


@dataclass
class SplitConfig:
    val: float = 0.15  # fractions of the whole dataset (of the windows, for a series)
    test: float = 0.2


# The typed tables of a config: their keys, types and ranges are checked when a config is read.
SECTIONS = {"optimizer": OptimizerConfig, "schedule": ScheduleConfig, "train": TrainConfig, "split": SplitConfig}

# Ranges of numeric values: (low, low included, high, high included); None is unbounded.
RANGES = {
    "optimizer.lr": (0, False, None, False), "optimizer.weight_decay": (0, True, None, False),
    "optimizer.momentum": (0, True, 1, False),
    "schedule.step_size": (1, True, None, False), "schedule.gamma": (0, False, 1, True),
    "schedule.factor": (0, False, 1, False), "schedule.patience": (0, True, None, False),
    "train.batch_size": (1, True, None, False), "train.epochs": (1, True, None, False),
    "train.patience": (0, True, None, False), "train.grad_clip": (0, True, None, False),
    "train.checkpoint_seconds": (0, True, None, False),
    "split.val": (0, False, 1, False), "split.test": (0, False, 1, False),
    "seed": (0, True, None, False), "model.dropout": (0, True, 1, False),
}
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _parses(text: str) -> bool:
    try:
        tomllib.loads(f"v = {text}")
        return True
    except tomllib.TOMLDecodeError:
        return False


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"


def _in_range(path: str, value: float) -> None:
    low, low_in, high, high_in = RANGES.get(path, (None, False, None, False))
    if (low is not None and (value < low or (value == low and not low_in))) or \
            (high is not None and (value > high or (value == high and not high_in))):
        if high is None:
            wanted = f"{'>=' if low_in else '>'} {low}"
        else:
            wanted = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
        raise ValueError(f"{path}: expected a value {wanted}, got {value!r}")


def _checked(path: str, expected: Any, value: Any, counts: bool) -> Any:
    """`value` as the field's type (an int widened where a float is expected), or a ValueError naming the path, the
    value and the type. `counts`: every integer is a size or a count, so at least 1."""
    if typing.get_origin(expected) is list:
        (item,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected an array of {PLURALS[item]} in TOML syntax, e.g. {path}=[64, 32], "
                             f"got {_describe(value)}")
        return [_checked(f"{path}[{i}]", item, v, counts) for i, v in enumerate(value)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected in TYPE_WORDS and (type(value) is not expected):
        hint = " (write numbers and booleans without quotes)" if isinstance(value, str) and expected is not str \
            and _parses(value) else ""
        raise ValueError(f"{path}: expected {TYPE_WORDS[expected]}, got {_describe(value)}{hint}")
    if expected in (int, float):
        _in_range(path.split("[")[0], value)
        if counts and expected is int and value < 1:
            raise ValueError(f"{path}: expected a positive integer, got {value!r}")
    return value


def check_fields(cls: type, values: dict, section: str, counts: bool = False) -> dict:
    """The values of a typed table checked against its dataclass's field types and RANGES; ValueError names the key
    (`optimizer.lr`), the value and the expected type. Keys the class lacks are left to the caller."""
    hints = typing.get_type_hints(cls)
    return {key: _checked(f"{section}.{key}" if section else key, hints[key], value, counts) if key in hints else value
            for key, value in values.items()}


@dataclass
class RunConfig:
    """Everything a run needs; saved resolved in the run folder so that export can rebuild the model."""

    name: str = ""
    arch: str = "mlp"
    dataset: str = "digits"
    task: str = ""  # empty: the dataset's own task
    seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # window, horizon, target, series, image_size, ...
    model: dict[str, Any] = field(default_factory=dict)  # architecture hyperparameters, see its *Config class
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    eval: dict[str, Any] = field(default_factory=dict)  # task-specific evaluation settings
    # Hyperparameter search space for `tune`: {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 0.1,
    # "log": true}, ...}. It says how to tune the config, not what a run learns: left out of sha256.
    search: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sha256(self) -> str:
        """Hash of the resolved config, recorded in the artifact to tell which config built it.

        Settings that change how a run is carried out but not what it learns (OPERATIONAL, and the search table
        of `tune`) are left out, so that adding one does not orphan every model already built."""
        data = self.to_dict()
        data.pop("search")
        for section, key in OPERATIONAL:
            data[section].pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = copy.deepcopy(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys are {sorted(known)}")
        for key, section_cls in SECTIONS.items():
            if key in data:
                if not isinstance(data[key], dict):
                    raise ValueError(f"{key}: expected a table, got {data[key]!r}")
                valid = {f.name for f in dataclasses.fields(section_cls)}
                bad = sorted(set(data[key]) - valid)
                if bad:
                    raise ValueError(f"unknown key(s) {[f'{key}.{b}' for b in bad]}; valid: {sorted(valid)}")
                data[key] = section_cls(**check_fields(section_cls, data[key], key))
        data.update(check_fields(cls, {k: v for k, v in data.items() if k in TOP_LEVEL}, ""))
        for key in FREE_SECTIONS:
            if key in data and not isinstance(data[key], dict):
                raise ValueError(f"{key}: expected a table, got {_describe(data[key])}")
        if "search" in data:
            check_search(data["search"])
        return cls(**data)


# Every table of a config (typed and free-form), in the order of RunConfig's fields: what a TOML config holds
# besides its single values.
TABLES = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name in SECTIONS or f.name in FREE_SECTIONS)


def _check_search_path(path: str) -> None:
    """The dotted path names a config value, or a free-form table (`model`) whose choices are tables."""
    root, *rest = path.split(".")
    roots = sorted({f.name for f in dataclasses.fields(RunConfig)} - {"name", "search"})
    if root not in roots or any(not part for part in rest):
        raise ValueError(f"search.{path}: not a config path; it starts with one of {roots}, e.g. optimizer.lr")
    if root in SECTIONS:
        valid = sorted(f.name for f in dataclasses.fields(SECTIONS[root]))
        if len(rest) != 1 or rest[0] not in valid:
            raise ValueError(f"search.{path}: {root} has no such key; valid: {[f'{root}.{v}' for v in valid]}")
    elif root not in FREE_SECTIONS and rest:
        raise ValueError(f"search.{path}: {root} is a single value, not a table")


def _is_number(value: Any, integer: bool) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if integer else (int, float))


def check_search(search: Any) -> None:
    """Validate a config's search section; every error names the entry (`search.optimizer.lr.low`)."""
    if not isinstance(search, dict):
        raise ValueError(f"search: expected a table of config paths, got {search!r}")
    for path, spec in search.items():
        _check_search_path(path)
        if not isinstance(spec, dict):
            raise ValueError(f"search.{path}: expected a table with a type, e.g. "
                             f"{{type = \"float\", low = 0.0001, high = 0.1, log = true}}, got {spec!r}")
        kind = spec.get("type")
        if kind not in SEARCH_TYPES:
            raise ValueError(f"search.{path}.type: {kind!r} is not a search type; valid types are {list(SEARCH_TYPES)}")
        bad = sorted(set(spec) - SEARCH_TYPES[kind] - {"type"})
        if bad:
            raise ValueError(f"search.{path}: unknown key(s) {bad} for type {kind!r}; "
                             f"valid: {sorted(SEARCH_TYPES[kind] | {'type'})}")
        whole_table = path in FREE_SECTIONS
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError(f"search.{path}.choices: expected a non-empty array, got {choices!r}")
            if whole_table and not all(isinstance(c, dict) for c in choices):
                raise ValueError(f"search.{path}.choices: {path} is a table; each choice must be a table of its keys")
            continue
        if whole_table:
            raise ValueError(f"search.{path}: {path} is a table; search one of its keys, e.g. {path}.dropout")
        integer = kind != "float"
        for key in ("low", "high"):
            if not _is_number(spec.get(key), integer):
                raise ValueError(f"search.{path}.{key}: expected {'an integer' if integer else 'a number'}, "
                                 f"got {spec.get(key)!r}")
        if not spec["low"] < spec["high"]:
            raise ValueError(f"search.{path}: low ({spec['low']}) must be below high ({spec['high']})")
        if not isinstance(spec.get("log", False), bool):
            raise ValueError(f"search.{path}.log: expected true or false, got {spec['log']!r}")
        if spec.get("log") and spec["low"] <= 0:
            raise ValueError(f"search.{path}.low: a log scale needs low > 0, got {spec['low']}")
        if "step" in spec:
            if spec.get("log"):
                raise ValueError(f"search.{path}: step and log cannot be used together")
            if not _is_number(spec["step"], integer) or spec["step"] <= 0:
                raise ValueError(f"search.{path}.step: expected a positive {'integer' if integer else 'number'}, "
                                 f"got {spec['step']!r}")
        layers = spec.get("layers")
        if kind == "widths" and not (isinstance(layers, list) and len(layers) == 2
                                     and all(_is_number(n, True) for n in layers) and 1 <= layers[0] <= layers[1]):
            raise ValueError(f"search.{path}.layers: expected [min, max] layer counts with 1 <= min <= max, "
                             f"got {layers!r}")


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML config; a bare zoo name (e.g. `digits-mlp`) is looked up in training/configs/."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / f"{path.name}.toml").exists():
        path = CONFIG_DIR / f"{path.name}.toml"
    try:
        with open(path, "rb") as fh:
            return RunConfig.from_dict(tomllib.load(fh))
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None


def _parse_value(text: str) -> Any:
    """TOML-typed value for `--set`: numbers, booleans, arrays and quoted strings; bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `key=value` / `section.key=value` overrides and return a new, re-validated config."""
    data = config.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. optimizer.lr=0.01")
        *parents, leaf = key.strip().split(".")
        target = data
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a config section")
            target = target[part]
        target[leaf] = _parse_value(value.strip())
    return RunConfig.from_dict(data)
