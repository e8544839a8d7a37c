"""The search space of `tune`: a config's [search] table as Optuna suggestions, and a trial's values as a config."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna

from training.config import FREE_SECTIONS, RunConfig


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


