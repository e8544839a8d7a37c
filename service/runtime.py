"""One loaded model version: its metadata, its ONNX Runtime session, input checks and inference."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service import artifact
from service.errors import InferenceFailed, InvalidInput
from service.protocol import NUMPY_DTYPES, InferRequest, clip

log = logging.getLogger(__name__)

ORT_TYPES = {  # ONNX Runtime type strings -> V2 datatypes
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
DEFAULT_MAX_SEQUENCE = 4096  # steps per request for variable-length inputs; an LSTM's memory grows with them


class LoadError(Exception):
    """A version that must not be served; the message says why (shown in logs and the repository index)."""


def select_providers(device: str) -> list[str]:
    """ONNX Runtime providers for a device setting ('auto' picks CUDA when the installed build has it)."""
    if device == "cpu":
        return [PROVIDERS["cpu"]]
    if device == "cuda" or PROVIDERS["cuda"] in ort.get_available_providers():
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]]
    if device == "auto":
        log.debug("device auto: this ONNX Runtime build has no CUDA provider, using the CPU")
    return [PROVIDERS["cpu"]]


def _shape_matches(expected: list[int], got: list[int]) -> bool:
    return len(expected) == len(got) and all(e == -1 or e == g for e, g in zip(expected, got))


@dataclass
class LoadedModel:
    """A model version ready for inference. Built by `load_model`; immutable afterwards."""

    name: str
    version: int
    metadata: dict
    session: ort.InferenceSession
    provider: str
    load_seconds: float

    def __post_init__(self) -> None:
        # Precomputed once so requests do no per-call lookups.
        self.inputs = {t["name"]: t for t in self.metadata["inputs"]}
        self.outputs = {t["name"]: t for t in self.metadata["outputs"]}
        self.output_names = [t["name"] for t in self.metadata["outputs"]]
        self.version_str = str(self.version)
        params = self.metadata.get("task_params", {})
        self.classes_input = params.get("classes_input")  # the GAN's class input: checked against the labels
        self.num_classes = len(self.metadata.get("labels") or [])
        # A model's own limit (a Transformer's position table) or the service's; 0-length is refused apart.
        self.max_sequence_length = min(params.get("max_sequence_length", DEFAULT_MAX_SEQUENCE), DEFAULT_MAX_SEQUENCE)
        self.batcher = None  # a service.batching.Batcher when the model is dynamically batched

    def describe(self, versions: list[str]) -> dict:
        """V2 model metadata response."""
        return {
            "name": self.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": self.metadata["inputs"],
            "outputs": self.metadata["outputs"],
            "parameters": {
                "task": self.metadata["task"],
                "architecture": self.metadata["architecture"],
                "version": self.version_str,
                "provider": self.provider,
                **({"labels": json.dumps(self.metadata["labels"])} if self.metadata.get("labels") else {}),
                # V2 parameters are scalars: the batching configuration as JSON, like the labels
                "dynamic_batching": json.dumps(self.batcher.config.describe() if self.batcher else None),
            },
        }

    def check_request(self, request: InferRequest, max_batch_size: int) -> dict[str, np.ndarray]:
        """Check every input against the metadata; return the feed, or raise InvalidInput with all problems."""
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
            if not _shape_matches(spec["shape"], tensor.shape):
                problems.append(f"input '{tensor.name}': expected shape {spec['shape']}, got {tensor.shape}")
            elif 0 in tensor.shape:
                problems.append(f"input '{tensor.name}': every dimension must be at least 1, got {tensor.shape}")
            elif tensor.shape and tensor.shape[0] > max_batch_size:
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
            if tensor.shape:
                batch_sizes.add(tensor.shape[0])
            feed[tensor.name] = tensor.array
        given = {t.name for t in request.inputs}
        for name, spec in self.inputs.items():
            if name not in given:
                problems.append(f"missing input '{name}' ({spec['datatype']} {spec['shape']})")
        if len(batch_sizes) > 1:
            problems.append(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
        if request.outputs is not None:
            for out in request.outputs:
                if out.name not in self.outputs:
                    problems.append(f"unknown output '{clip(out.name)}'; the model's outputs are {self.output_names}")
        if problems:
            raise InvalidInput(self.name, problems)
        return feed

    def run(self, feed: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the session on a checked feed."""
        names = output_names or self.output_names
        try:
            values = self.session.run(names, feed)
        except Exception as exc:  # ORT raises its own types; input was already checked, so this is ours
            log.exception("inference failed for %s/%s", self.name, self.version)
            raise InferenceFailed(f"inference failed for model '{self.name}' version {self.version}: "
                                  f"{type(exc).__name__}") from exc
        return dict(zip(names, values))


def _warmup_feed(metadata: dict) -> dict[str, np.ndarray]:
    """A batch-1 input of zeros (every variable dim set to 1), for the first run before serving."""
    return {t["name"]: np.zeros([1 if d == -1 else d for d in t["shape"]], dtype=NUMPY_DTYPES[t["datatype"]])
            for t in metadata["inputs"]}


def _check_session(metadata: dict, session: ort.InferenceSession, embedded: str | None) -> list[str]:
    problems = []
    for kind, specs, nodes in (("input", metadata["inputs"], session.get_inputs()),
                               ("output", metadata["outputs"], session.get_outputs())):
        graph = {n.name: n for n in nodes}
        if sorted(graph) != sorted(t["name"] for t in specs):
            problems.append(f"{kind}s: metadata lists {[t['name'] for t in specs]}, the graph has {sorted(graph)}")
            continue
        for spec in specs:
            node = graph[spec["name"]]
            if ORT_TYPES.get(node.type) != spec["datatype"]:
                problems.append(f"{kind} '{spec['name']}': metadata says {spec['datatype']}, the graph {node.type}")
            dims = [d if isinstance(d, int) else -1 for d in node.shape]
            if dims != spec["shape"]:
                problems.append(f"{kind} '{spec['name']}': metadata shape {spec['shape']}, the graph {dims}")
    if embedded is None:
        problems.append(f"model.onnx: no embedded metadata under '{artifact.METADATA_PROP}'")
    elif json.loads(embedded) != artifact.embedded_view(metadata):
        problems.append("model.onnx: embedded metadata differs from metadata.json")
    return problems


def load_model(version_dir: Path, device: str = "auto", threads: int = 1) -> LoadedModel:
    """Load, verify and warm up one version; raise LoadError saying why it cannot be served."""
    started = time.perf_counter()
    version_dir = Path(version_dir)
    try:
        metadata = artifact.read_metadata(version_dir)
    except artifact.MetadataError as exc:
        raise LoadError("; ".join(exc.problems)) from None
    try:
        data = (version_dir / artifact.MODEL_FILENAME).read_bytes()
    except OSError as exc:
        raise LoadError(artifact.unreadable(artifact.MODEL_FILENAME, exc)) from None
    problems = artifact.verify_model_bytes(metadata, data)
    if problems:
        raise LoadError("; ".join(problems))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = select_providers(device)
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises several types for a bad graph
        raise LoadError(f"ONNX Runtime cannot load {artifact.MODEL_FILENAME}: {str(exc)[:300]}") from None
    active = session.get_providers()
    if device == "cuda" and PROVIDERS["cuda"] not in active:
        # ONNX Runtime falls back to CPU silently when CUDA libraries are missing.
        raise LoadError(f"device 'cuda' was asked for but ONNX Runtime runs on {active}")
    problems = _check_session(metadata, session, session.get_modelmeta().custom_metadata_map.get(
        artifact.METADATA_PROP))
    if problems:
        raise LoadError("; ".join(problems))
    model = LoadedModel(metadata["name"], metadata["version"], metadata, session, active[0],
                        load_seconds=0.0)
    try:
        model.run(_warmup_feed(metadata))
    except InferenceFailed as exc:
        raise LoadError(f"warm-up inference failed: {exc.__cause__}") from None
    model.load_seconds = time.perf_counter() - started
    log.info("loaded %s version %s on %s in %.3fs", model.name, model.version, model.provider,
             model.load_seconds)
    return model


def batch_size_of(feed: dict[str, np.ndarray]) -> int:
    """The batch dimension of a checked feed (all inputs agree)."""
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1

