"""One loaded model version: its configuration and metadata, its ONNX Runtime session, and inference.

`load_model` reads and verifies a version folder; the session is built by service/session.py and warmed up by
service/warmup.py. Requests are checked against a LoadedModel by service/checks.py.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service import artifact, onnxfile
from service.autocomplete import complete
from service.configfile import default_filename, read_config
from service.errors import ConfigError, InferenceFailed, LoadError
from service.modelconfig import DATA_TYPES, DEFAULT_MAX_BATCH_SIZE, GraphTensor, ModelConfig, TensorConfig
from service.session import build_session
from service.warmup import warm_up

log = logging.getLogger(__name__)

DEFAULT_MAX_SEQUENCE = 4096  # steps per request for variable-length inputs; an LSTM's memory grows with them
DEFAULT_MAX_MODEL_BYTES = 4 << 30  # what a model's stored tensors may declare (Settings.max_model_bytes)


def _api_shape(tensor: TensorConfig, batching: bool) -> list[int]:
    return ([-1] if batching else []) + tensor.dims


@dataclass
class LoadedModel:
    """A model version ready for inference, described by its Triton model configuration and, for nnserve's own
    artifacts, its metadata (labels, task, provenance). Built by `load_model`; immutable afterwards."""

    name: str
    version: int
    config: ModelConfig
    session: ort.InferenceSession
    provider: str
    load_seconds: float
    metadata: dict = field(default_factory=dict)  # nnserve's layer; empty for a model from elsewhere

    def __post_init__(self) -> None:
        # Precomputed once so requests do no per-call lookups.
        config = self.config
        self.batching = config.max_batch_size > 0
        self.max_batch_size = config.max_batch_size  # the registry may lower it to the operator's limit
        self.input_specs = [{"name": t.name, "datatype": t.datatype, "shape": _api_shape(t, self.batching)}
                            for t in config.inputs]
        self.output_specs = [{"name": t.name, "datatype": t.datatype, "shape": _api_shape(t, self.batching)}
                             for t in config.outputs]
        self.inputs = {t["name"]: t for t in self.input_specs}
        self.outputs = {t["name"]: t for t in self.output_specs}
        self.required_inputs = [t.name for t in config.inputs if not t.optional]
        # The model's own shape where config.pbtxt reshapes: requests may also send it, as nnserve always took.
        self.model_shapes = {t.name: ([-1] if self.batching else []) + (t.reshape or [])
                             for t in config.inputs if t.reshape is not None or t.scalar}
        self.output_reshapes = {t.name: t.dims for t in config.outputs
                                if (t.reshape is not None or t.scalar) and t.dims.count(-1) <= 1}
        self.output_names = [t.name for t in config.outputs]
        self.version_str = str(self.version)
        params = self.metadata.get("task_params", {})
        self.labels = self.metadata.get("labels")
        self.features = self.metadata.get("features")  # a table's input columns, in order (nnserve's own models)
        # Why each input has its shape, from nnserve's metadata: added to a wrong-shape error.
        preprocessing = self.metadata.get("preprocessing")
        self.shape_reasons = (preprocessing.get("input_shapes") or {}) if isinstance(preprocessing, dict) else {}
        self.classes_input = params.get("classes_input")  # the GAN's class input: checked against the labels
        self.noise_input = params.get("noise_input")  # the GAN's latent input: /v1 draws it when left out
        self.num_classes = len(self.labels or [])
        # nnserve's metadata may bound an input: its values (minimum, maximum), each string's UTF-8 size
        # (max_bytes); and give the value a /v1 instance that leaves the input out takes (default)
        declared = [t for t in self.metadata.get("inputs", []) if isinstance(t, dict) and t.get("name") in self.inputs]
        self.input_limits = {t["name"]: {k: t[k] for k in artifact.INPUT_LIMITS if k in t} for t in declared
                             if any(k in t for k in artifact.INPUT_LIMITS)}
        self.input_defaults = {t["name"]: t["default"] for t in declared if "default" in t}
        # A model's own limit (a Transformer's position table) or the service's; 0-length is refused apart.
        self.max_sequence_length = min(params.get("max_sequence_length", DEFAULT_MAX_SEQUENCE), DEFAULT_MAX_SEQUENCE)
        self.batcher = None  # a service.batching.Batcher when the model is dynamically batched
        self.sequence = config.sequence_batching  # a stateful model's controls and states (sequence_config)
        self.sequences = None  # then its service.sequences.SequenceTable, set by the registry

    def describe(self, versions: list[str]) -> dict:
        """V2 model metadata response."""
        return {
            "name": self.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": self.input_specs,
            "outputs": self.output_specs,
            "parameters": {**self.nnserve_parameters(),
                           # V2 parameters are scalars: the batching configuration as JSON, like the labels
                           "dynamic_batching": json.dumps(self.batcher.config.describe() if self.batcher else None)},
        }

    def nnserve_parameters(self) -> dict[str, str]:
        """What nnserve adds to Triton's description: the provider, and its own artifacts' task, labels and feature
        names (lists as JSON text: V2 parameters are scalars)."""
        meta = self.metadata
        params = {"version": self.version_str, "provider": self.provider}
        for key in ("task", "architecture"):
            if key in meta:
                params[key] = meta[key]
        if self.labels:
            params["labels"] = json.dumps(self.labels)
        if self.features:
            params["features"] = json.dumps(self.features)
        return params

    def run(self, feed: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the session on a checked feed; outputs come back in the configuration's shape."""
        names = output_names or self.output_names
        try:
            values = self.session.run(names, feed)
        except Exception as exc:  # ORT raises its own types; input was already checked, so this is ours
            log.exception("inference failed for %s/%s", self.name, self.version)
            raise InferenceFailed(f"inference failed for model '{self.name}' version {self.version}: "
                                  f"{type(exc).__name__}") from exc
        result = dict(zip(names, values))
        if self.output_reshapes:
            for name, dims in self.output_reshapes.items():
                if name in result:
                    value = result[name]
                    result[name] = value.reshape(([value.shape[0]] if self.batching and value.ndim else []) + dims)
        return result



def load_model(version_dir: Path, device: str = "auto", threads: int = 1, config_fields: dict | None = None,
               default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, default_version_policy: dict | None = None,
               max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES, share_weights_bytes: int = 0,
               weights_cache: Path | None = None) -> LoadedModel:
    """Load, verify and warm up one version; raise LoadError saying why it cannot be served.

    `config_fields` is the parsed config.pbtxt of the model (read from the model folder when not given). A model
    whose stored tensors declare at least `share_weights_bytes` (0: never) is run on the CPU from memory-mapped
    weights, which the worker processes share: from its own external data, or from a copy made under
    `weights_cache`; ONNX Runtime's weight prepacking, which would copy them per process, is off for it."""
    started = time.perf_counter()
    version_dir = Path(version_dir)
    model_dir = version_dir.parent
    try:
        if config_fields is None:
            config_fields = read_config(model_dir)
        filename = default_filename(config_fields)
    except ConfigError as exc:
        raise LoadError(str(exc)) from None
    metadata = _nnserve_metadata(version_dir, filename)
    path = version_dir / filename
    data = _read_model_file(path, max_model_bytes)
    if metadata is not None:
        problems = artifact.verify_model_bytes(metadata, data, filename)
        if problems:
            raise LoadError("; ".join(problems))
    facts = _inspect(data, path, max_model_bytes)
    if metadata is None:
        metadata = _embedded_metadata(facts)
    session, shared = build_session(data, path, facts, device, threads, share_weights_bytes, weights_cache)
    config = _configure(session, config_fields, model_dir, metadata, facts, default_max_batch_size,
                        default_version_policy)
    model = LoadedModel(model_dir.name, int(version_dir.name), config, session, session.get_providers()[0], 0.0,
                        metadata or {})
    warm_up(model, model_dir)
    model.load_seconds = time.perf_counter() - started
    log.info("loaded %s version %s on %s in %.3fs%s", model.name, model.version, model.provider,
             model.load_seconds, ", from memory-mapped weights shared by the workers" if shared else "")
    return model


def _read_model_file(path: Path, max_model_bytes: int) -> bytes:
    """The model file's bytes, refused when it is over the size limit, unreadable or empty."""
    filename = path.name
    try:
        size = path.stat().st_size
        if size > max_model_bytes:  # a graph's own bytes count against the limit too
            raise LoadError(f"{filename}: {size} bytes, more than the limit of {max_model_bytes} "
                            "(NNSERVE_MAX_MODEL_BYTES)")
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(artifact.unreadable(filename, exc)) from None
    if not data:
        raise LoadError(f"{filename}: the file is empty")
    return data


def _inspect(data: bytes, path: Path, max_model_bytes: int) -> onnxfile.ModelFacts:
    """What the file declares, read without ONNX Runtime: refused when it is not ONNX, points at external data
    outside its folder, or declares tensors over the size limit."""
    filename = path.name
    try:
        facts = onnxfile.inspect(data)
    except onnxfile.InvalidModelFile as exc:
        raise LoadError(f"{filename}: not a valid ONNX model: protobuf parsing failed ({exc})") from None
    problems = onnxfile.unsafe_external_data(facts, path.parent)
    if problems:
        raise LoadError(f"{filename}: " + "; ".join(problems))
    if facts.tensor_bytes > max_model_bytes:
        raise LoadError(f"{filename}: its stored tensors declare {facts.tensor_bytes} bytes, more than the limit of "
                        f"{max_model_bytes} (NNSERVE_MAX_MODEL_BYTES)")
    return facts


def _configure(session: ort.InferenceSession, config_fields: dict | None, model_dir: Path, metadata: dict | None,
               facts: onnxfile.ModelFacts, default_max_batch_size: int,
               default_version_policy: dict | None) -> ModelConfig:
    """The model configuration, completed from the session's graph, after nnserve's metadata (if any) was checked
    against that graph."""
    inputs = [GraphTensor.of(n) for n in session.get_inputs()]
    outputs = [GraphTensor.of(n) for n in session.get_outputs()]
    overridable = [GraphTensor.of(n) for n in session.get_overridable_initializers()]
    try:
        config = complete(config_fields, model_dir.name, inputs, outputs, default_max_batch_size, default_version_policy,
                          overridable, model_dir)
    except ConfigError as exc:
        raise LoadError(str(exc)) from None
    if metadata is not None:
        sequence = config.sequence_batching  # its control and state tensors are the server's, not in the metadata
        if sequence is not None:
            kept = {s.output_name for s in sequence.states} - set(config.output_names())
            inputs = [t for t in inputs if t.name not in sequence.extra_inputs]
            outputs = [t for t in outputs if t.name not in kept]
        problems = _check_metadata(metadata, inputs, outputs, facts.metadata.get(artifact.METADATA_PROP))
        if problems:
            raise LoadError("; ".join(problems))
    return config


def _check_metadata(metadata: dict, inputs: list[GraphTensor], outputs: list[GraphTensor],
                    embedded: str | None) -> list[str]:
    """nnserve's metadata layer, when present, must describe the graph as it is."""
    problems = []
    for kind, specs, nodes in (("input", metadata["inputs"], inputs), ("output", metadata["outputs"], outputs)):
        graph = {n.name: n for n in nodes}
        if sorted(graph) != sorted(t["name"] for t in specs):
            problems.append(f"{kind}s: metadata lists {[t['name'] for t in specs]}, the graph has {sorted(graph)}")
            continue
        for spec in specs:
            node = graph[spec["name"]]
            if DATA_TYPES.get(node.data_type) != spec["datatype"]:
                problems.append(f"{kind} '{spec['name']}': metadata says {spec['datatype']}, the graph {node.ort_type}")
            if node.shape != spec["shape"]:
                problems.append(f"{kind} '{spec['name']}': metadata shape {spec['shape']}, the graph {node.shape}")
    if embedded is None:
        problems.append(f"model.onnx: no embedded metadata under '{artifact.METADATA_PROP}'")
    elif json.loads(embedded) != artifact.embedded_view(metadata):
        problems.append("model.onnx: embedded metadata differs from metadata.json")
    return problems


def _nnserve_metadata(version_dir: Path, filename: str) -> dict | None:
    """nnserve's metadata.json when the version has one (else None); raise LoadError when it is unreadable."""
    if not (version_dir / artifact.METADATA_FILENAME).exists():
        return None
    try:
        metadata = artifact.read_metadata(version_dir)
    except artifact.MetadataError as exc:
        raise LoadError("; ".join(exc.problems)) from None
    if filename not in metadata["files"]:
        raise LoadError(f"metadata.json: files has no entry for {filename}")
    return metadata


def _embedded_metadata(facts: onnxfile.ModelFacts) -> dict | None:
    """The metadata nnserve's exporter embeds in the file, for a version without metadata.json; None if absent."""
    embedded = facts.metadata.get(artifact.METADATA_PROP)
    if embedded is None:
        return None
    try:
        return artifact.check_metadata(json.loads(embedded), f"model.onnx: embedded '{artifact.METADATA_PROP}'")
    except ValueError as exc:  # JSONDecodeError or MetadataError
        raise LoadError(str(exc)[:500]) from None


def batch_size_of(feed: dict[str, np.ndarray]) -> int:
    """The batch dimension of a checked feed (all inputs agree)."""
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1

