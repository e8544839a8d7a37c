"""config.pbtxt's fields read into nnserve's terms: tensors, version policy, batching, parameters and warm-up.

Each reader takes the parsed text (service/pbtxt.py) and raises ConfigError naming the field and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.errors import ConfigError
from service.modelconfig import (CONFIG_FILENAME, DATA_TYPES, MAX_WARMUP_RUNS, SERVED_TYPES, TENSOR_FIELDS,
                                 TensorConfig)
from service.pbtxt import parse_pbtxt


def one(fields: Any, key: str, kind: type | tuple, where: str, default: Any = None) -> Any:
    if not isinstance(fields, dict):
        raise ConfigError(f"{where.rstrip('. ')}: expected a {{ ... }} block, got {fields!r:.60}")
    values = fields.get(key)
    if not values:
        return default
    if len(values) > 1:
        raise ConfigError(f"{where}{key}: given {len(values)} times, expected once")
    value = values[0]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{where}{key}: expected {getattr(kind, '__name__', kind)}, got {value!r:.60}")
    return value


def ints(fields: Any, key: str, where: str) -> list[int]:
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}{key}: expected a {{ ... }} block, got {fields!r:.60}")
    values = fields.get(key, [])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= -1 for v in values):
        raise ConfigError(f"{where}{key}: expected integers (-1 for any size), got {values!r:.80}")
    return list(values)


def read_tensor(fields: Any, where: str) -> TensorConfig:
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: expected a {{ ... }} block")
    unknown = sorted(set(fields) - TENSOR_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}")
    name = one(fields, "name", str, f"{where}.")
    if not name:
        raise ConfigError(f"{where}.name: required")
    where = f"{where.split('[')[0]} '{name}'"
    data_type = one(fields, "data_type", str, f"{where}: ", "")
    if data_type and data_type not in DATA_TYPES:
        raise ConfigError(f"{where}: data_type {data_type} is not one nnserve serves; expected one of "
                          f"{sorted(SERVED_TYPES)}")
    for flag in ("allow_ragged_batch", "is_shape_tensor"):
        if one(fields, flag, bool, f"{where}: ", False):
            raise ConfigError(f"{where}: {flag} is not supported by nnserve")
    reshape = None
    if "reshape" in fields:
        block = one(fields, "reshape", dict, f"{where}: ")
        reshape = ints(block, "shape", f"{where}: reshape.")
    extra = {k: one(fields, k, (str, int, bool), f"{where}: ") for k in ("format", "label_filename") if k in fields}
    return TensorConfig(name, data_type, ints(fields, "dims", f"{where}: "), reshape,
                        bool(one(fields, "optional", bool, f"{where}: ", False)), extra)


def select_versions(policy: dict, available: list[int]) -> tuple[list[int], int | None]:
    """(the candidate versions, highest first; how many of them to serve, None for all) under a version_policy.

    With `latest`, a version that fails to load is passed over for the next lower one."""
    ordered = sorted(available, reverse=True)
    if "specific" in policy:
        wanted = set(policy["specific"]["versions"])
        return [v for v in ordered if v in wanted], None
    if "latest" in policy:
        return ordered, policy["latest"]["num_versions"]
    return ordered, None


def version_policy(fields: dict | None) -> dict | None:
    """The version_policy of a parsed config.pbtxt, normalized; None when it has none."""
    block = one(fields or {}, "version_policy", dict, "")
    if block is None:
        return None
    kinds = [k for k in ("latest", "all", "specific") if k in block]
    if len(kinds) != 1 or set(block) - {"latest", "all", "specific"}:
        raise ConfigError(f"version_policy: expected one of latest, all or specific, got {sorted(block)}")
    body = one(block, kinds[0], dict, "version_policy.")
    if kinds[0] == "latest":
        n = one(body, "num_versions", int, "version_policy.latest.", 1)
        if n < 1:
            raise ConfigError(f"version_policy.latest.num_versions: expected 1 or more, got {n}")
        return {"latest": {"num_versions": n}}
    if kinds[0] == "specific":
        versions = ints(body, "versions", "version_policy.specific.")
        if not versions or min(versions) < 1:
            raise ConfigError(f"version_policy.specific.versions: expected positive version numbers, got {versions}")
        return {"specific": {"versions": versions}}
    return {"all": {}}


def parameters(fields: dict) -> dict[str, str]:
    params = {}
    for entry in fields.get("parameters", []):
        if not isinstance(entry, dict) or set(entry) - {"key", "value"}:
            raise ConfigError("parameters: expected entries { key: \"...\" value { string_value: \"...\" } }")
        key = one(entry, "key", str, "parameters.")
        value = one(entry, "value", dict, f"parameters '{key}': ", {})
        params[key] = str(one(value, "string_value", (str, int, float), f"parameters '{key}': ", ""))
    return params


def dynamic_batching(fields: dict) -> dict | None:
    block = one(fields, "dynamic_batching", dict, "")
    if block is None:
        return None
    doc: dict[str, Any] = {}
    if "preferred_batch_size" in block:
        doc["preferred_batch_size"] = ints(block, "preferred_batch_size", "dynamic_batching.")
        if any(p < 1 for p in doc["preferred_batch_size"]):
            raise ConfigError(f"dynamic_batching.preferred_batch_size: expected sizes of 1 or more, got "
                              f"{doc['preferred_batch_size']}")
    delay = one(block, "max_queue_delay_microseconds", int, "dynamic_batching.")
    if delay is not None and delay < 0:
        raise ConfigError(f"dynamic_batching.max_queue_delay_microseconds: expected 0 or more, got {delay}")
    if delay is not None:
        doc["max_queue_delay_microseconds"] = delay
    policy = one(block, "default_queue_policy", dict, "dynamic_batching.")
    if policy is not None:
        size = one(policy, "max_queue_size", int, "dynamic_batching.default_queue_policy.", 0)
        if size < 0:
            raise ConfigError(f"dynamic_batching.default_queue_policy.max_queue_size: expected 0 (unbounded) or more, "
                              f"got {size}")
        doc["default_queue_policy"] = {"max_queue_size": size}
    if "preserve_ordering" in block:
        doc["preserve_ordering"] = bool(one(block, "preserve_ordering", bool, "dynamic_batching."))
    return doc


def warmup_samples(fields: dict) -> list[dict]:
    samples = []
    for i, sample in enumerate(fields.get("model_warmup", [])):
        where = f"model_warmup[{i}]"
        if not isinstance(sample, dict):
            raise ConfigError(f"{where}: expected a {{ ... }} block")
        inputs = {}
        for entry in sample.get("inputs", []):
            key = one(entry, "key", str, f"{where}.inputs.")
            value = one(entry, "value", dict, f"{where}.inputs '{key}': ")
            data_type = one(value, "data_type", str, f"{where}.inputs '{key}': ", "")
            kinds = [k for k in ("zero_data", "random_data", "input_data_file") if k in value]
            if data_type not in SERVED_TYPES or len(kinds) != 1:
                raise ConfigError(f"{where}.inputs '{key}': expected a data_type and one of zero_data, random_data "
                                  "or input_data_file")
            inputs[key] = {"data_type": data_type, "dims": ints(value, "dims", f"{where}.inputs '{key}': "),
                           kinds[0]: value[kinds[0]][0]}
        entry = {"name": one(sample, "name", str, f"{where}.", f"sample_{i}"),
                 "batch_size": one(sample, "batch_size", int, f"{where}.", 0),
                 "inputs": inputs, "count": one(sample, "count", int, f"{where}.", 1)}
        if not 0 <= entry["batch_size"] <= MAX_WARMUP_RUNS or not 0 <= entry["count"] <= MAX_WARMUP_RUNS:
            raise ConfigError(f"{where}: batch_size and count must be from 0 to {MAX_WARMUP_RUNS}")
        samples.append(entry)
    return samples


def default_filename(fields: dict[str, list] | None) -> str:
    """The model file of each version folder: default_model_filename, else model.onnx."""
    filename = one(fields or {}, "default_model_filename", str, "", "model.onnx")
    if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
        raise ConfigError(f"default_model_filename: expected a file name in the version folder, got {filename!r:.80}")
    return filename


def read_config(model_dir: Path) -> dict[str, list] | None:
    """The parsed config.pbtxt of a model folder, or None when there is none."""
    path = Path(model_dir) / CONFIG_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigError("config.pbtxt: not UTF-8 text") from None
    except OSError as exc:  # a folder where the file should be, no permission: the reason, not the path
        raise ConfigError(f"config.pbtxt: cannot be read ({exc.strerror or type(exc).__name__})") from None
    return parse_pbtxt(text)

