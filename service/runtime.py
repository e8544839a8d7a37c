"""One loaded model version: its configuration and metadata, its ONNX Runtime session, input checks and inference."""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service import artifact, modelconfig, onnxfile
from service.errors import BadRequest, InferenceFailed, InvalidInput
from service.modelconfig import (DATA_TYPES, DEFAULT_MAX_BATCH_SIZE, MAX_WARMUP_ELEMENTS, ConfigError, GraphTensor,
                                 ModelConfig, TensorConfig, read_config)
from service.protocol import NUMPY_DTYPES, InferRequest, clip, decode_bytes_elements

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
DEFAULT_MAX_SEQUENCE = 4096  # steps per request for variable-length inputs; an LSTM's memory grows with them
DEFAULT_MAX_MODEL_BYTES = 4 << 30  # what a model's stored tensors may declare (Settings.max_model_bytes)
FLOAT_TYPES = ("FP16", "FP32", "FP64")


class LoadError(Exception):
    """A version that must not be served; the message says why (shown in logs and the repository index)."""


def select_providers(device: str) -> list[str]:
    """ONNX Runtime providers for a device setting ('auto' picks CUDA when the installed build has it)."""
    if device == "cpu":
        return [PROVIDERS["cpu"]]
    if device == "cuda" or PROVIDERS["cuda"] in ort.get_available_providers():
        _preload_cuda_libraries()
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]]
    if device == "auto":
        log.debug("device auto: this ONNX Runtime build has no CUDA provider, using the CPU")
    return [PROVIDERS["cpu"]]


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed (onnxruntime-gpu's `cuda` and `cudnn` extras, the
    `nvidia-*` wheels) before the first CUDA session: the dynamic loader does not look in site-packages, and without
    them ONNX Runtime falls back to the CPU. Libraries on the loader's path (a CUDA base image) need nothing."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu only
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a library missing here is reported by the session's providers, with the device check
        log.warning("onnxruntime.preload_dlls(): %s", exc)


def _shape_matches(expected: list[int], got: list[int]) -> bool:
    return len(expected) == len(got) and all(e == -1 or e == g for e, g in zip(expected, got))


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
        self.num_classes = len(self.labels or [])
        # A model's own limit (a Transformer's position table) or the service's; 0-length is refused apart.
        self.max_sequence_length = min(params.get("max_sequence_length", DEFAULT_MAX_SEQUENCE), DEFAULT_MAX_SEQUENCE)
        self.batcher = None  # a service.batching.Batcher when the model is dynamically batched

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

    def check_request(self, request: InferRequest, max_batch_size: int) -> dict[str, np.ndarray]:
        """Check every input against the configuration; return the feed, or raise InvalidInput with all problems."""
        problems = list(request.problems)
        feed: dict[str, np.ndarray] = {}
        batch_sizes = set()
        for tensor in request.inputs:
            spec = self.inputs.get(tensor.name)
            if spec is None:
                problems.append(f"unexpected input '{clip(tensor.name)}'; the model's inputs are {list(self.inputs)}")
                continue
            if tensor.name in feed:
                problems.append(f"input '{tensor.name}' is given more than once")
                continue
            if tensor.datatype != spec["datatype"]:
                problems.append(f"input '{tensor.name}': expected datatype {spec['datatype']}, got {tensor.datatype}")
            model_shape = self.model_shapes.get(tensor.name)
            if not (_shape_matches(spec["shape"], tensor.shape)
                    or model_shape is not None and _shape_matches(model_shape, tensor.shape)):
                reason = self.shape_reasons.get(tensor.name)
                problems.append(f"input '{tensor.name}': expected shape {spec['shape']}, got {tensor.shape}"
                                + (f" (each sample: {reason})" if reason else ""))
            elif 0 in tensor.shape:
                problems.append(f"input '{tensor.name}': every dimension must be at least 1, got {tensor.shape}")
            elif self.batching and tensor.shape[0] > max_batch_size:
                problems.append(f"input '{tensor.name}': batch size {tensor.shape[0]} exceeds the maximum of "
                                f"{max_batch_size}; split the request")
            elif any(d > self.max_sequence_length for d, want in zip(tensor.shape[1:], spec["shape"][1:]) if want == -1):
                problems.append(f"input '{tensor.name}': sequence length {tensor.shape[1]} exceeds the maximum of "
                                f"{self.max_sequence_length}")
            if tensor.array is None or tensor.datatype != spec["datatype"]:
                continue
            if tensor.array.dtype.kind == "f" and not np.isfinite(tensor.array).all():
                bad = int(np.flatnonzero(~np.isfinite(tensor.array.reshape(-1)))[0])
                problems.append(f"input '{tensor.name}': values must be finite, found "
                                f"{tensor.array.reshape(-1)[bad]} at flat index {bad}")
                continue
            if tensor.name == self.classes_input and self.num_classes and tensor.array.size and (
                    tensor.array.min() < 0 or tensor.array.max() >= self.num_classes):
                problems.append(f"input '{tensor.name}': class indices must be in 0..{self.num_classes - 1}, got "
                                f"values from {tensor.array.min()} to {tensor.array.max()}")
                continue
            if self.batching and tensor.shape:
                batch_sizes.add(tensor.shape[0])
            array = tensor.array
            if model_shape is not None and not _shape_matches(model_shape, tensor.shape):
                try:  # config.pbtxt's reshape: the API's shape to the model's (dims and reshape hold one -1 at most)
                    array = array.reshape([array.shape[0]] + model_shape[1:] if self.batching else model_shape)
                except ValueError:
                    problems.append(f"input '{tensor.name}': shape {tensor.shape} cannot be reshaped to the model's "
                                    f"{model_shape}")
                    continue
            feed[tensor.name] = array
        given = {t.name for t in request.inputs}
        for name in self.required_inputs:
            if name not in given:
                spec = self.inputs[name]
                problems.append(f"missing input '{name}' ({spec['datatype']} {spec['shape']})")
        if len(batch_sizes) > 1:
            problems.append(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
        if request.outputs is not None:
            for out in request.outputs:
                if out.name not in self.outputs:
                    problems.append(f"unknown output '{clip(out.name)}'; the model's outputs are {self.output_names}")
                elif out.classification and self.outputs[out.name]["datatype"] in ("BYTES", "BOOL"):
                    problems.append(f"output '{out.name}': classification ranks numeric scores, the output is "
                                    f"{self.outputs[out.name]['datatype']}")
        if problems:
            raise InvalidInput(self.name, problems)
        return feed

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


def _warmup_feeds(model: LoadedModel, model_dir: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The warm-up requests as (sample name, feed): config.pbtxt's model_warmup samples (each one request of
    batch_size samples, run `count` times), else ("", one batch-1 sample of zeros) when every input is floating
    point. Integer, boolean and string inputs may be data the graph depends on (shapes, indices, lengths), and
    made-up values could fail a valid model, so such a model is not warmed up without samples."""
    samples = model.config.model_warmup
    if not samples:
        if not all(spec["datatype"] in FLOAT_TYPES for spec in model.input_specs):
            log.info("%s version %s: no model_warmup in config.pbtxt and inputs that may be data: not warmed up",
                     model.name, model.version)
            return []
        feed = {}
        for spec in model.input_specs:
            shape = [1 if d == -1 else d for d in model.model_shapes.get(spec["name"], spec["shape"])]
            if math.prod(shape) > MAX_WARMUP_ELEMENTS:
                return []
            feed[spec["name"]] = np.zeros(shape, dtype=NUMPY_DTYPES[spec["datatype"]])
        return [("", feed)]
    feeds = []
    rng = np.random.default_rng(0)
    for sample in samples:
        if sample["batch_size"] == 0:  # Triton skips such a sample
            continue
        batch = [sample["batch_size"]] if model.batching else []
        feed = {}
        for name, spec in sample["inputs"].items():
            if name not in model.inputs:
                raise LoadError(f"config.pbtxt: model_warmup '{sample['name']}' names input '{name}', which the "
                                f"model does not have")
            shape = batch + spec["dims"]
            if -1 in shape or math.prod(shape) > MAX_WARMUP_ELEMENTS:
                raise LoadError(f"config.pbtxt: model_warmup '{sample['name']}' input '{name}': dims {spec['dims']} "
                                f"must be fixed and hold at most {MAX_WARMUP_ELEMENTS} elements")
            dtype = NUMPY_DTYPES[DATA_TYPES[spec["data_type"]]]
            if "input_data_file" in spec:
                feed[name] = _warmup_file(model_dir, spec["input_data_file"], dtype, shape, sample["name"])
            elif dtype.kind == "O":
                feed[name] = np.full(shape, "" if "zero_data" in spec else "warmup", dtype=object)
            elif "random_data" in spec and dtype.kind in "iuf":
                feed[name] = rng.integers(0, 10, shape).astype(dtype)
            else:
                feed[name] = np.zeros(shape, dtype=dtype)
            model_shape = model.model_shapes.get(name)
            if model_shape is not None:
                feed[name] = feed[name].reshape(batch + model_shape[len(batch):])
        feeds += [(sample["name"], feed)] * max(1, sample["count"])
    return feeds


def _warmup_file(model_dir: Path, filename: str, dtype: np.dtype, shape: list[int], sample: str) -> np.ndarray:
    """Triton's input_data_file: raw little-endian values (BYTES: length-prefixed) in <model>/warmup/."""
    where = f"config.pbtxt: model_warmup '{sample}' input_data_file '{filename[:64]}'"
    if not artifact.is_valid_name(filename):
        raise LoadError(f"{where}: expected a file name inside the model's warmup folder")
    path = model_dir / "warmup" / filename
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"{where}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    count = math.prod(shape)
    if dtype.kind == "O":
        try:
            return decode_bytes_elements(data, count, where).reshape(shape)
        except BadRequest as exc:
            raise LoadError(exc.message) from None
    if len(data) != count * dtype.itemsize:
        raise LoadError(f"{where}: holds {len(data)} bytes, the sample needs {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)


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


SHARED_TENSOR_BYTES = 1 << 20
"""With shared weights, the initializers of at least this size go to the memory-mapped file; smaller ones stay."""


def shared_weights_copy(data: bytes, path: Path, cache: Path) -> Path:
    """The model file with its big initializers moved to external data, made once per machine under `cache` (the
    first worker to get there writes it under a lock; the others wait and use it). Copies of earlier files of the
    same version are removed: a worker still mapping one keeps its pages until it lets go."""
    stat = path.stat()
    version_dir = path.parent
    prefix = f"{version_dir.parent.name}-{version_dir.name}-"
    folder = cache / f"{prefix}{stat.st_size}-{stat.st_mtime_ns}"
    if not (folder / "model.onnx").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f"{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "model.onnx").is_file():
                for old in cache.glob(f"{prefix}*"):
                    if old.is_dir() and old != folder:
                        shutil.rmtree(old, ignore_errors=True)
                work = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
                onnxfile.externalize(data, work, SHARED_TENSOR_BYTES)
                os.rename(work, folder)
    return folder / "model.onnx"


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
        filename = modelconfig.default_filename(config_fields)
    except ConfigError as exc:
        raise LoadError(str(exc)) from None
    metadata = _nnserve_metadata(version_dir, filename)
    path = version_dir / filename
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
    if metadata is not None:
        problems = artifact.verify_model_bytes(metadata, data, filename)
        if problems:
            raise LoadError("; ".join(problems))
    try:
        facts = onnxfile.inspect(data)
    except onnxfile.InvalidModelFile as exc:
        raise LoadError(f"{filename}: not a valid ONNX model: protobuf parsing failed ({exc})") from None
    problems = onnxfile.unsafe_external_data(facts, version_dir)
    if problems:
        raise LoadError(f"{filename}: " + "; ".join(problems))
    if facts.tensor_bytes > max_model_bytes:
        raise LoadError(f"{filename}: its stored tensors declare {facts.tensor_bytes} bytes, more than the limit of "
                        f"{max_model_bytes} (NNSERVE_MAX_MODEL_BYTES)")
    if metadata is None:
        metadata = _embedded_metadata(facts)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = select_providers(device)
    source = str(path) if facts.external else data  # from the path when weights live beside it (checked above)
    shared = (share_weights_bytes > 0 and facts.tensor_bytes >= share_weights_bytes
              and PROVIDERS["cuda"] not in providers)  # on a GPU the weights are copied to its memory anyway
    if shared:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.enable_cpu_mem_arena = False  # a big model's activations are allocated per run, not kept pooled
        if not facts.external and weights_cache is not None:
            try:
                source = str(shared_weights_copy(data, path, weights_cache))
            except OSError as exc:  # no room for the copy: serve it unshared rather than not at all
                log.warning("%s version %s: cannot write its shared weights (%s); each worker holds its own copy",
                            model_dir.name, version_dir.name, exc)
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises several types for a bad graph
        message = str(exc).replace(str(version_dir), "<version>")[:300]
        raise LoadError(f"ONNX Runtime cannot load {filename}: {message}") from None
    active = session.get_providers()
    if device == "cuda" and PROVIDERS["cuda"] not in active:
        # ONNX Runtime falls back to CPU silently when CUDA libraries are missing.
        raise LoadError(f"device 'cuda' was asked for but ONNX Runtime runs on {active}")
    inputs = [GraphTensor.of(n) for n in session.get_inputs()]
    outputs = [GraphTensor.of(n) for n in session.get_outputs()]
    if metadata is not None:
        problems = _check_metadata(metadata, inputs, outputs, facts.metadata.get(artifact.METADATA_PROP))
        if problems:
            raise LoadError("; ".join(problems))
    overridable = [GraphTensor.of(n) for n in session.get_overridable_initializers()]
    try:
        config = modelconfig.complete(config_fields, model_dir.name, inputs, outputs, default_max_batch_size,
                                      default_version_policy, overridable)
    except ConfigError as exc:
        raise LoadError(str(exc)) from None
    model = LoadedModel(model_dir.name, int(version_dir.name), config, session, active[0], 0.0, metadata or {})
    for sample, feed in _warmup_feeds(model, model_dir):
        try:
            session.run(None, feed)
        except Exception as exc:  # ORT raises its own types
            if sample:  # config.pbtxt's own sample must run, as in Triton
                raise LoadError(f"failed to run warmup sample '{sample}': warm-up inference failed: "
                                f"{str(exc)[:300]}") from None
            log.warning("%s version %s: warm-up on zeros failed (%s); serving it, since zeros are made up",
                        model.name, model.version, str(exc)[:200])
            break
    model.load_seconds = time.perf_counter() - started
    log.info("loaded %s version %s on %s in %.3fs%s", model.name, model.version, model.provider,
             model.load_seconds, ", from memory-mapped weights shared by the workers" if shared else "")
    return model


def batch_size_of(feed: dict[str, np.ndarray]) -> int:
    """The batch dimension of a checked feed (all inputs agree)."""
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1

