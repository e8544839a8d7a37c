"""Triton's model configuration: config.pbtxt read, auto-completed from the ONNX graph, validated, shown as JSON.

The description of every served model is a `ModelConfig`, built the way Triton's ONNX Runtime backend builds
it (triton-inference-server/onnxruntime_backend `src/onnxruntime.cc`, core `src/model_config_utils.cc`):

- config.pbtxt is optional, and may be partial. Inputs and outputs it leaves out come from the graph; when it
  lists both, they are validated against the graph instead.
- The model can batch when every graph input and output has a dynamic first dimension. A batching model with
  no (or a zero) max_batch_size gets `default_max_batch_size` (Triton's 4), and then `dynamic_batching {}`.
  A non-zero max_batch_size on a model that cannot batch is refused.
- With max_batch_size > 0, `dims` leave out the batch dimension. A per-sample scalar is `dims: [1]` with
  `reshape { shape: [] }`.

Standard library only: the graph's tensors come in as (name, ONNX Runtime type string, shape) triples.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILENAME = "config.pbtxt"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config=default-max-batch-size

# Triton data_type -> V2 datatype; ONNX Runtime type string -> Triton data_type.
DATA_TYPES = {
    "TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_UINT16": "UINT16", "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64", "TYPE_INT8": "INT8", "TYPE_INT16": "INT16", "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64", "TYPE_FP16": "FP16", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES", "TYPE_BF16": "BF16",
}
ORT_TYPES = {
    "tensor(bool)": "TYPE_BOOL", "tensor(uint8)": "TYPE_UINT8", "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64", "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16", "tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING", "tensor(bfloat16)": "TYPE_BF16",
}
SERVED_TYPES = set(DATA_TYPES) - {"TYPE_BF16"}  # numpy has no bfloat16: such a model is refused with a reason

# ModelConfig's fields (model_config.proto). Honoured ones are read below; these mean something only to Triton's
# own scheduling or hardware: they are accepted, said once in the log, and left out of the JSON form.
IGNORED_FIELDS = ("instance_group", "optimization", "cc_model_filenames", "metric_tags", "model_repository_agent",
                  "response_cache", "model_operations", "model_transaction_policy", "runtime")
UNSUPPORTED_FIELDS = ("sequence_batching", "ensemble_scheduling", "batch_input", "batch_output")
HONOURED_FIELDS = ("name", "platform", "backend", "version_policy", "max_batch_size", "input", "output",
                   "dynamic_batching", "parameters", "model_warmup", "default_model_filename")
KNOWN_FIELDS = set(HONOURED_FIELDS + IGNORED_FIELDS + UNSUPPORTED_FIELDS)
TENSOR_FIELDS = {"name", "data_type", "format", "dims", "reshape", "is_shape_tensor", "allow_ragged_batch",
                 "optional", "label_filename", "is_non_linear_format_io"}
MAX_WARMUP_ELEMENTS = 1 << 22  # elements of one warm-up input
MAX_WARMUP_RUNS = 1000  # batch_size and count of one model_warmup sample


class ConfigError(ValueError):
    """A config.pbtxt that cannot be read, or that does not fit the model; the message says why."""


# -- protobuf text format --------------------------------------------------------------------------------------
_SPACE = re.compile(r"(?:\s+|#[^\n]*)*")  # white space and comments
_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]?(?![A-Za-z0-9_]))
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]<>:,;])
""", re.VERBOSE)
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v"}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
MAX_NESTING = 32  # message depth; deeper config.pbtxt text is refused rather than recursed into


def _unquote(text: str) -> str:
    """A quoted protobuf string: C escapes, octal and hex bytes (TextFormat writes non-ASCII as octal), UTF-8."""
    out, pos = bytearray(), 0
    body = text[1:-1]
    for match in _ESCAPE.finditer(body):
        out += body[pos:match.start()].encode("utf-8")
        code = match.group(1)
        if code[0] == "x":
            out.append(int(code[1:], 16))
        elif code[0] in "01234567":
            out.append(int(code, 8) & 0xFF)
        else:
            out += _ESCAPES.get(code, code.encode("utf-8"))
        pos = match.end()
    out += body[pos:].encode("utf-8")
    return out.decode("utf-8", "replace")


class _Parser:
    """protobuf text format into {field: [values]} (every field a list: repeated or not, as written)."""

    def __init__(self, text: str):
        self.tokens: list[tuple[str, Any]] = []
        pos = _SPACE.match(text).end()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match:
                line = text.count("\n", 0, pos) + 1
                raise ConfigError(f"config.pbtxt: line {line}: cannot read {text[pos:pos + 20]!r}")
            kind = match.lastgroup
            value = match.group(kind)
            if kind == "string":
                value = _unquote(value)
            elif kind == "number":
                value = float(value.rstrip("fF")) if re.search(r"[.eEfF]", value) else int(value)
            self.tokens.append((kind, value))
            pos = _SPACE.match(text, match.end()).end()
        self.at = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", None)

    def take(self, punct: str | None = None) -> tuple[str, Any]:
        token = self.peek()
        if punct is not None and token != ("punct", punct):
            raise ConfigError(f"config.pbtxt: expected '{punct}', found {token[1]!r}")
        self.at += 1
        return token

    def message(self, close: str | None) -> dict[str, list]:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ConfigError(f"config.pbtxt: messages nested more than {MAX_NESTING} deep")
        fields: dict[str, list] = {}
        while True:
            kind, value = self.peek()
            if close is not None and (kind, value) == ("punct", close):
                self.take()
                self.depth -= 1
                return fields
            if kind == "end":
                if close is not None:
                    raise ConfigError(f"config.pbtxt: missing '{close}' at the end")
                return fields
            if kind != "word":
                raise ConfigError(f"config.pbtxt: expected a field name, found {value!r}")
            self.take()
            if self.peek() == ("punct", ":"):
                self.take()
            values = fields.setdefault(value, [])
            if self.peek() == ("punct", "["):
                self.take()
                while self.peek() != ("punct", "]"):
                    values.append(self.value(value))
                    if self.peek() == ("punct", ","):
                        self.take()
                self.take("]")
            else:
                values.append(self.value(value))
            if self.peek() in (("punct", ","), ("punct", ";")):
                self.take()

    def value(self, name: str) -> Any:
        kind, value = self.take()
        if (kind, value) in (("punct", "{"), ("punct", "<")):
            return self.message("}" if value == "{" else ">")
        if kind in ("string", "number"):
            return value
        if kind == "word":
            return {"true": True, "false": False, "True": True, "False": False}.get(value, value)
        raise ConfigError(f"config.pbtxt: field '{name}': expected a value, found {value!r}")


def parse_pbtxt(text: str) -> dict[str, list]:
    """Parse protobuf text format; raise ConfigError naming the line or field that cannot be read."""
    return _Parser(text).message(None)


# -- the configuration ---------------------------------------------------------------------------------------
@dataclass
class TensorConfig:
    """One input or output as the API sees it: `dims` without the batch dimension when the model batches."""

    name: str
    data_type: str  # Triton's TYPE_*
    dims: list[int]
    reshape: list[int] | None = None  # the model's own shape of a sample, when it differs from dims
    optional: bool = False
    extra: dict = field(default_factory=dict)  # fields kept for the JSON only (format, label_filename, ...)
    scalar: bool = False  # the graph's tensor has rank 0 and the model does not batch: dims [1] on the API

    @property
    def datatype(self) -> str:
        """The V2 datatype (BYTES for TYPE_STRING)."""
        return DATA_TYPES[self.data_type]

    def to_json(self, output: bool) -> dict:
        """model_config.proto's ModelInput / ModelOutput in Triton's JSON (its field order, defaults printed)."""
        doc: dict[str, Any] = {"name": self.name, "data_type": self.data_type}
        if not output:
            doc["format"] = self.extra.get("format", "FORMAT_NONE")
        doc["dims"] = self.dims
        if self.reshape is not None:
            doc["reshape"] = {"shape": self.reshape}
        if output:
            doc.update({"label_filename": self.extra.get("label_filename", ""), "is_shape_tensor": False})
        else:
            doc.update({"is_shape_tensor": False, "allow_ragged_batch": False, "optional": self.optional})
        doc["is_non_linear_format_io"] = False
        return doc


@dataclass
class ModelConfig:
    name: str
    max_batch_size: int
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    version_policy: dict  # {"latest": {"num_versions": N}} | {"all": {}} | {"specific": {"versions": [...]}}
    dynamic_batching: dict | None = None  # the block as written ({} for Triton's defaults)
    parameters: dict[str, str] = field(default_factory=dict)
    model_warmup: list[dict] = field(default_factory=list)
    default_model_filename: str = "model.onnx"
    ignored: list[str] = field(default_factory=list)  # fields that mean something only to Triton

    def to_json(self, nnserve_parameters: dict[str, str] | None = None, gpu: bool = False) -> dict:
        """Triton's JSON form of the configuration (model_config.proto's field names), as tritonclient reads it;
        nnserve's own fields are added to `parameters` where config.pbtxt does not set the same key."""
        params = {k: {"string_value": v} for k, v in {**(nnserve_parameters or {}), **self.parameters}.items()}
        doc: dict[str, Any] = {
            "name": self.name, "platform": PLATFORM, "backend": BACKEND, "runtime": "",
            "version_policy": self.version_policy,
            "max_batch_size": self.max_batch_size,
            "input": [t.to_json(False) for t in self.inputs],
            "output": [t.to_json(True) for t in self.outputs],
            "batch_input": [], "batch_output": [],
        }
        if self.dynamic_batching is not None:
            doc["dynamic_batching"] = _dynamic_batching_json(self.dynamic_batching, self.max_batch_size)
        doc.update({"instance_group": [{"name": self.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1,
                                        "gpus": [0] if gpu else [],
                                        "secondary_devices": [], "profile": [], "passive": False,
                                        "host_policy": ""}],
                    "default_model_filename": self.default_model_filename, "cc_model_filenames": {},
                    "metric_tags": {}, "parameters": params, "model_warmup": self.model_warmup})
        return doc


def _dynamic_batching_json(block: dict, max_batch_size: int) -> dict:
    preferred = block.get("preferred_batch_size") or ([max_batch_size] if max_batch_size else [])
    policy = block.get("default_queue_policy") or {}
    return {"preferred_batch_size": preferred,
            "max_queue_delay_microseconds": block.get("max_queue_delay_microseconds", 0),
            "preserve_ordering": block.get("preserve_ordering", False),
            "priority_levels": 0, "default_priority_level": 0, "priority_queue_policy": {},
            **({"default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": 0,
                                         "allow_timeout_override": False,
                                         "max_queue_size": policy.get("max_queue_size", 0)}} if policy else {})}


# -- reading a config.pbtxt -------------------------------------------------------------------------------------
def _one(fields: Any, key: str, kind: type | tuple, where: str, default: Any = None) -> Any:
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


def _ints(fields: Any, key: str, where: str) -> list[int]:
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}{key}: expected a {{ ... }} block, got {fields!r:.60}")
    values = fields.get(key, [])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= -1 for v in values):
        raise ConfigError(f"{where}{key}: expected integers (-1 for any size), got {values!r:.80}")
    return list(values)


def _tensor(fields: Any, where: str) -> TensorConfig:
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: expected a {{ ... }} block")
    unknown = sorted(set(fields) - TENSOR_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}")
    name = _one(fields, "name", str, f"{where}.")
    if not name:
        raise ConfigError(f"{where}.name: required")
    where = f"{where.split('[')[0]} '{name}'"
    data_type = _one(fields, "data_type", str, f"{where}: ", "")
    if data_type and data_type not in DATA_TYPES:
        raise ConfigError(f"{where}: data_type {data_type} is not one nnserve serves; expected one of "
                          f"{sorted(SERVED_TYPES)}")
    for flag in ("allow_ragged_batch", "is_shape_tensor"):
        if _one(fields, flag, bool, f"{where}: ", False):
            raise ConfigError(f"{where}: {flag} is not supported by nnserve")
    reshape = None
    if "reshape" in fields:
        block = _one(fields, "reshape", dict, f"{where}: ")
        reshape = _ints(block, "shape", f"{where}: reshape.")
    extra = {k: _one(fields, k, (str, int, bool), f"{where}: ") for k in ("format", "label_filename") if k in fields}
    return TensorConfig(name, data_type, _ints(fields, "dims", f"{where}: "), reshape,
                        bool(_one(fields, "optional", bool, f"{where}: ", False)), extra)


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
    block = _one(fields or {}, "version_policy", dict, "")
    if block is None:
        return None
    kinds = [k for k in ("latest", "all", "specific") if k in block]
    if len(kinds) != 1 or set(block) - {"latest", "all", "specific"}:
        raise ConfigError(f"version_policy: expected one of latest, all or specific, got {sorted(block)}")
    body = _one(block, kinds[0], dict, "version_policy.")
    if kinds[0] == "latest":
        n = _one(body, "num_versions", int, "version_policy.latest.", 1)
        if n < 1:
            raise ConfigError(f"version_policy.latest.num_versions: expected 1 or more, got {n}")
        return {"latest": {"num_versions": n}}
    if kinds[0] == "specific":
        versions = _ints(body, "versions", "version_policy.specific.")
        if not versions or min(versions) < 1:
            raise ConfigError(f"version_policy.specific.versions: expected positive version numbers, got {versions}")
        return {"specific": {"versions": versions}}
    return {"all": {}}


def _parameters(fields: dict) -> dict[str, str]:
    params = {}
    for entry in fields.get("parameters", []):
        if not isinstance(entry, dict) or set(entry) - {"key", "value"}:
            raise ConfigError("parameters: expected entries { key: \"...\" value { string_value: \"...\" } }")
        key = _one(entry, "key", str, "parameters.")
        value = _one(entry, "value", dict, f"parameters '{key}': ", {})
        params[key] = str(_one(value, "string_value", (str, int, float), f"parameters '{key}': ", ""))
    return params


def dynamic_batching(fields: dict) -> dict | None:
    block = _one(fields, "dynamic_batching", dict, "")
    if block is None:
        return None
    doc: dict[str, Any] = {}
    if "preferred_batch_size" in block:
        doc["preferred_batch_size"] = _ints(block, "preferred_batch_size", "dynamic_batching.")
        if any(p < 1 for p in doc["preferred_batch_size"]):
            raise ConfigError(f"dynamic_batching.preferred_batch_size: expected sizes of 1 or more, got "
                              f"{doc['preferred_batch_size']}")
    delay = _one(block, "max_queue_delay_microseconds", int, "dynamic_batching.")
    if delay is not None and delay < 0:
        raise ConfigError(f"dynamic_batching.max_queue_delay_microseconds: expected 0 or more, got {delay}")
    if delay is not None:
        doc["max_queue_delay_microseconds"] = delay
    policy = _one(block, "default_queue_policy", dict, "dynamic_batching.")
    if policy is not None:
        size = _one(policy, "max_queue_size", int, "dynamic_batching.default_queue_policy.", 0)
        if size < 0:
            raise ConfigError(f"dynamic_batching.default_queue_policy.max_queue_size: expected 0 (unbounded) or more, "
                              f"got {size}")
        doc["default_queue_policy"] = {"max_queue_size": size}
    if "preserve_ordering" in block:
        doc["preserve_ordering"] = bool(_one(block, "preserve_ordering", bool, "dynamic_batching."))
    return doc


def _warmup(fields: dict) -> list[dict]:
    samples = []
    for i, sample in enumerate(fields.get("model_warmup", [])):
        where = f"model_warmup[{i}]"
        if not isinstance(sample, dict):
            raise ConfigError(f"{where}: expected a {{ ... }} block")
        inputs = {}
        for entry in sample.get("inputs", []):
            key = _one(entry, "key", str, f"{where}.inputs.")
            value = _one(entry, "value", dict, f"{where}.inputs '{key}': ")
            data_type = _one(value, "data_type", str, f"{where}.inputs '{key}': ", "")
            kinds = [k for k in ("zero_data", "random_data", "input_data_file") if k in value]
            if data_type not in SERVED_TYPES or len(kinds) != 1:
                raise ConfigError(f"{where}.inputs '{key}': expected a data_type and one of zero_data, random_data "
                                  "or input_data_file")
            inputs[key] = {"data_type": data_type, "dims": _ints(value, "dims", f"{where}.inputs '{key}': "),
                           kinds[0]: value[kinds[0]][0]}
        entry = {"name": _one(sample, "name", str, f"{where}.", f"sample_{i}"),
                 "batch_size": _one(sample, "batch_size", int, f"{where}.", 0),
                 "inputs": inputs, "count": _one(sample, "count", int, f"{where}.", 1)}
        if not 0 <= entry["batch_size"] <= MAX_WARMUP_RUNS or not 0 <= entry["count"] <= MAX_WARMUP_RUNS:
            raise ConfigError(f"{where}: batch_size and count must be from 0 to {MAX_WARMUP_RUNS}")
        samples.append(entry)
    return samples


def default_filename(fields: dict[str, list] | None) -> str:
    """The model file of each version folder: default_model_filename, else model.onnx."""
    filename = _one(fields or {}, "default_model_filename", str, "", "model.onnx")
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


# -- auto-complete and validation against the graph -----------------------------------------------------------
@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output as ONNX Runtime reports it; symbolic and unknown dims are -1."""

    name: str
    ort_type: str
    shape: list[int] | None  # None: ONNX Runtime does not know the rank

    @classmethod
    def of(cls, node) -> "GraphTensor":
        shape = None if node.shape is None else [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape]
        return cls(node.name, node.type, shape)

    @property
    def data_type(self) -> str:
        return ORT_TYPES.get(self.ort_type, "TYPE_INVALID")


def _can_batch(tensors: list[GraphTensor]) -> bool:
    return all(t.shape and t.shape[0] == -1 for t in tensors)


def _from_graph(tensor: GraphTensor, max_batch_size: int, kind: str) -> TensorConfig:
    if tensor.data_type not in SERVED_TYPES:
        raise ConfigError(f"unable to autofill for '{tensor.name}': the {kind}'s ONNX type {tensor.ort_type} "
                          f"is not one nnserve serves")
    shape = tensor.shape if tensor.shape is not None else [-1]
    dims = shape[1:] if max_batch_size > 0 else shape
    if not dims:  # Triton has no empty dims: a scalar is [1], reshaped to [] for the model when batching
        return TensorConfig(tensor.name, tensor.data_type, [1], [] if max_batch_size > 0 else None,
                            scalar=max_batch_size == 0)
    return TensorConfig(tensor.name, tensor.data_type, list(dims))


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _compare_dims(model: str, tensor: TensorConfig, shape: list[int], max_batch_size: int, exact: bool) -> None:
    """Triton's CompareDimsSupported: the configuration's shape of a tensor against the graph's."""
    dims = tensor.reshape if tensor.reshape is not None else tensor.dims
    where = f"model '{model}', tensor '{tensor.name}'"
    if max_batch_size > 0:
        if not shape or shape[0] != -1:
            raise ConfigError(f"{where}: for the model to support batching the shape should have at least 1 "
                              f"dimension and the first dimension must be -1; but shape expected by the model is "
                              f"{_shape_text(shape)}")
        full = [-1] + dims
        detail = ("an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, "
                  f"making complete shape {_shape_text(full)}")
    else:
        full, detail = dims, f"shape {_shape_text(dims)}"
    if len(full) != len(shape) or not all(m == c if exact or m != -1 else True for m, c in zip(shape, full)):
        raise ConfigError(f"{where}: the model expects {len(shape)} dimensions (shape {_shape_text(shape)}) but the "
                          f"model configuration specifies {len(full)} dimensions ({detail})")


def _validate(kind: str, given: list[TensorConfig], graph: list[GraphTensor], max_batch_size: int,
              model: str, overridable: list[GraphTensor] = ()) -> None:
    """Triton's ValidateInputs / ValidateOutputs, with its wording. `overridable`: the graph's initializers that
    an input may override (ONNX Runtime's overridable initializers), which config.pbtxt lists as optional."""
    by_name = {t.name: t for t in [*overridable, *graph]}
    names = [t.name for t in given]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"model '{model}': {kind} {twice} listed more than once in the configuration")
    if kind == "input":
        expected = len([t for t in given if not t.optional])
        if expected != len(graph):
            raise ConfigError(f"unable to load model '{model}', configuration expects {expected} inputs, model "
                              f"provides {len(graph)}")
    for tensor in given:
        node = by_name.get(tensor.name)
        if node is not None and not tensor.optional and node in overridable:
            raise ConfigError(f"unable to load model '{model}', input '{tensor.name}' is an initializer the model "
                              "may take as an input: declare it optional")
        if tensor.optional and max_batch_size != 0:
            raise ConfigError(f"unable to load model '{model}', optional input '{tensor.name}' is not supported "
                              "for models that support batching")
        if node is None:
            raise ConfigError(f"unexpected inference {kind} '{tensor.name}', allowed {kind}s are: "
                              + ", ".join(sorted(by_name)))
        model_type = node.data_type if node.data_type != "TYPE_STRING" else "TYPE_BYTES"
        if not tensor.data_type:
            raise ConfigError(f"model {kind} '{tensor.name}' must specify 'data_type' for {model}")
        if tensor.data_type != node.data_type:
            raise ConfigError(f"unable to load model '{model}', configuration expects datatype {tensor.data_type} "
                              f"for {kind} '{tensor.name}', model provides {model_type}")
        if tensor.data_type not in SERVED_TYPES:
            raise ConfigError(f"unsupported datatype {tensor.data_type} for {kind} '{tensor.name}' for model "
                              f"'{model}'")
        if not tensor.dims:
            raise ConfigError(f"model {kind} '{tensor.name}' must specify 'dims' for {model}")
        if any(d == 0 or d < -1 for d in tensor.dims + (tensor.reshape or [])):
            raise ConfigError(f"model {kind} '{tensor.name}' dimension must be integer >= 1, or -1 to indicate a "
                              f"variable-size dimension for {model}")
        if tensor.reshape is not None:
            if not tensor.reshape and max_batch_size == 0:
                raise ConfigError(f"model {kind} '{tensor.name}' cannot have empty reshape for non-batching model "
                                  f"as scalar tensors are not supported for {model}")
            variable = (tensor.dims.count(-1), tensor.reshape.count(-1))
            if variable[0] != variable[1] or variable[0] > 1:
                raise ConfigError(f"model {kind} '{tensor.name}': dims {tensor.dims} and reshape {tensor.reshape} must "
                                  f"have the same variable-size (-1) dimension, at most one, for {model}")
            if math.prod(tensor.dims) != math.prod(tensor.reshape):
                raise ConfigError(f"model {kind} '{tensor.name}' has different size for dims and reshape for {model}")
        if node.shape is None:
            continue
        if node.shape == [] and tensor.reshape is None:  # a scalar the model takes or gives as such
            if any(d != 1 for d in tensor.dims):
                raise ConfigError(f"unable to load model '{model}', scalar tensor '{tensor.name}', should only "
                                  "provide 1 in the model configuration when the model doesn't support batching. "
                                  f"Model configuration provided: {_shape_text(tensor.dims)}.")
            tensor.scalar = True
            continue
        _compare_dims(model, tensor, node.shape, max_batch_size, exact=kind == "output")


def complete(fields: dict[str, list] | None, folder: str, graph_inputs: list[GraphTensor],
             graph_outputs: list[GraphTensor], default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
             default_version_policy: dict | None = None, overridable: list[GraphTensor] = ()) -> ModelConfig:
    """Auto-complete a (possibly absent or partial) config.pbtxt from the graph and validate it, as Triton does."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - KNOWN_FIELDS)
    if unknown:
        raise ConfigError(f"config.pbtxt: unknown field(s) {unknown}")
    unsupported = [k for k in UNSUPPORTED_FIELDS if k in fields]
    if unsupported:
        raise ConfigError(f"config.pbtxt: {', '.join(unsupported)} is not supported by nnserve")
    name = _one(fields, "name", str, "", folder)
    if name != folder:
        raise ConfigError(f"unexpected directory name '{folder}' for model '{name}', directory name must equal "
                          "model name")
    platform = _one(fields, "platform", str, "", PLATFORM)
    backend = _one(fields, "backend", str, "", BACKEND)
    if platform != PLATFORM or backend != BACKEND:
        raise ConfigError(f"platform '{platform}' / backend '{backend}': nnserve serves ONNX models only "
                          f"(platform '{PLATFORM}', backend '{BACKEND}')")
    filename = default_filename(fields)
    max_batch_size = _one(fields, "max_batch_size", int, "", 0)
    if max_batch_size < 0:
        raise ConfigError(f"'max_batch_size' must be non-negative value for {folder}")
    for tensors, kind in ((graph_inputs, "input"), (graph_outputs, "output")):
        for tensor in tensors:
            if tensor.ort_type.startswith(("seq(", "map(", "optional(")):
                raise ConfigError(f"unable to autofill for '{folder}': {kind} '{tensor.name}' is of type "
                                  f"{tensor.ort_type}, not a tensor; nnserve serves tensor inputs and outputs only")
    inputs = [_tensor(t, f"input[{i}]") for i, t in enumerate(fields.get("input", []))]
    outputs = [_tensor(t, f"output[{i}]") for i, t in enumerate(fields.get("output", []))]
    batching = dynamic_batching(fields)
    if not (inputs and outputs):  # Triton auto-completes only when a side is missing
        if _can_batch(graph_inputs + graph_outputs):
            if max_batch_size == 0:
                max_batch_size = default_max_batch_size
            if max_batch_size > 1 and batching is None:
                batching = {}
        elif max_batch_size != 0:
            raise ConfigError(f"autofill failed for model '{folder}': model does not support batching while "
                              "non-zero max_batch_size is specified")
    if inputs:
        _validate("input", inputs, graph_inputs, max_batch_size, folder, overridable)
    else:
        inputs = [_from_graph(t, max_batch_size, "input") for t in graph_inputs]
    if outputs:
        _validate("output", outputs, graph_outputs, max_batch_size, folder)
    else:
        outputs = [_from_graph(t, max_batch_size, "output") for t in graph_outputs]
    preferred = (batching or {}).get("preferred_batch_size", [])
    if any(p > max_batch_size for p in preferred):
        raise ConfigError(f"dynamic batching preferred size must be <= max batch size for {folder}")
    ignored = [k for k in IGNORED_FIELDS if k in fields]
    return ModelConfig(name=folder, max_batch_size=max_batch_size, inputs=inputs, outputs=outputs,
                       version_policy=version_policy(fields) or default_version_policy or {"latest": {"num_versions": 1}},
                       dynamic_batching=batching, parameters=_parameters(fields),
                       model_warmup=_warmup(fields), default_model_filename=filename, ignored=ignored)

