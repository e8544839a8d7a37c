"""Triton's model configuration: the types every served model is described by, and their JSON form.

The description of every served model is a `ModelConfig`: config.pbtxt is parsed by service/pbtxt.py, its
fields read by service/configfile.py, and the whole completed from the ONNX graph and validated by
service/autocomplete.py, the way Triton's ONNX Runtime backend does it.

Standard library only: the graph's tensors come in as (name, ONNX Runtime type string, shape) triples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

# ModelConfig's fields (model_config.proto). Honoured ones are read by service/configfile.py; these mean something
# only to Triton's own scheduling or hardware: they are accepted, said once in the log, and left out of the JSON form.
IGNORED_FIELDS = ("instance_group", "optimization", "cc_model_filenames", "metric_tags", "model_repository_agent",
                  "response_cache", "model_operations", "model_transaction_policy", "runtime")
UNSUPPORTED_FIELDS = ("ensemble_scheduling", "batch_input", "batch_output")
HONOURED_FIELDS = ("name", "platform", "backend", "version_policy", "max_batch_size", "input", "output",
                   "dynamic_batching", "sequence_batching", "parameters", "model_warmup", "default_model_filename")
KNOWN_FIELDS = set(HONOURED_FIELDS + IGNORED_FIELDS + UNSUPPORTED_FIELDS)
TENSOR_FIELDS = {"name", "data_type", "format", "dims", "reshape", "is_shape_tensor", "allow_ragged_batch",
                 "optional", "label_filename", "is_non_linear_format_io"}
MAX_WARMUP_ELEMENTS = 1 << 22  # elements of one warm-up input
MAX_WARMUP_RUNS = 1000  # batch_size and count of one model_warmup sample


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
    sequence_batching: Any = None  # a service.sequence_config.SequenceBatching: a stateful model's controls, states

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

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
        if self.sequence_batching is not None:
            doc["sequence_batching"] = self.sequence_batching.to_json()
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

