"""A RunConfig written back as TOML (tune's best_config.toml), with the tables that config.py reads."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from typing import Any

from training.config import TABLES, RunConfig


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")) if not math.isfinite(value) \
            else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are valid in a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot write {value!r} to TOML")


def config_toml(config: RunConfig, header: str = "") -> str:
    """The config as a TOML file that load_config reads back to an equal config."""
    data = config.to_dict()
    data.pop("search")
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if k not in TABLES]
    for section in TABLES:
        if data[section]:
            lines += ["", f"[{section}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data[section].items()]
    text = "\n".join(lines) + "\n"
    assert RunConfig.from_dict(tomllib.loads(text)) == dataclasses.replace(config, search={}), "TOML round trip"
    return text
