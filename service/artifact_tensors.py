"""The tensor specs of metadata.json (`inputs`, `outputs`): name, datatype and shape, and an input's optional
bounds and /v1 default, each problem naming its field."""

from __future__ import annotations

import math
from typing import Any

INPUT_LIMITS = ("minimum", "maximum", "max_bytes")  # optional bounds of an input in metadata.json, enforced when served
# V2 datatype -> numpy dtype name (numpy is not imported here; the service maps names to dtypes).
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "object",
}


def check_tensors(field: str, tensors: Any, problems: list[str]) -> None:
    """Every way a list of tensor specs breaks the contract, appended to `problems`."""
    if not isinstance(tensors, list) or not tensors:
        problems.append(f"{field}: expected a non-empty list of tensor specs, got {tensors!r:.80}")
        return
    seen = set()
    for i, spec in enumerate(tensors):
        where = f"{field}[{i}]"
        if not isinstance(spec, dict):
            problems.append(f"{where}: expected an object with name, datatype and shape")
            continue
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: expected a non-empty string, got {name!r}")
        elif name in seen:
            problems.append(f"{where}.name: duplicate tensor name {name!r}")
        seen.add(name)
        if spec.get("datatype") not in DATATYPES:
            problems.append(f"{where}.datatype: expected one of {sorted(DATATYPES)}, got {spec.get('datatype')!r}")
        shape = spec.get("shape")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in shape)):
            problems.append(f"{where}.shape: expected a non-empty list of positive ints or -1, got {shape!r}")
        _check_limits(where, spec, problems)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_limits(where: str, spec: dict, problems: list[str]) -> None:
    """An input's optional bounds (INPUT_LIMITS) and /v1 default: numbers for a numeric input, max_bytes for BYTES."""
    bytes_kind = spec.get("datatype") == "BYTES"
    for key in ("minimum", "maximum"):
        if key in spec and (bytes_kind or not _is_number(spec[key])):
            problems.append(f"{where}.{key}: expected a finite number bounding a numeric input, got {spec[key]!r:.80}")
    if _is_number(spec.get("minimum")) and _is_number(spec.get("maximum")) and spec["minimum"] > spec["maximum"]:
        problems.append(f"{where}: minimum {spec['minimum']} is above maximum {spec['maximum']}")
    size = spec.get("max_bytes")
    if "max_bytes" in spec and (not bytes_kind or not isinstance(size, int) or isinstance(size, bool) or size < 1):
        problems.append(f"{where}.max_bytes: expected a positive integer bounding a BYTES input, got {size!r:.80}")
    if "default" in spec and not (isinstance(spec["default"], str) if bytes_kind else _is_number(spec["default"])):
        problems.append(f"{where}.default: expected a {'string' if bytes_kind else 'number'}, "
                        f"got {spec['default']!r:.80}")
