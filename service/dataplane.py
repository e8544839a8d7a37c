"""What the HTTP endpoints do, without HTTP: metadata, health and inference over the registry."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import numpy as np

from service import __version__
from service.checks import check_request
from service.errors import BadRequest, ServiceError
from service.instances import instances_request
from service.metrics import Metrics
from service.protocol import InferRequest, classify, dumps, dumps_nonfinite
from service.runtime import LoadedModel, batch_size_of
from service.registry import ModelRegistry
from service.settings import Settings
from service.stateful import run_step

MAX_SAMPLE_ELEMENTS = 65536  # elements of one sample, times the --max-batch-size cap: a request's element cap
T = TypeVar("T")
Result = tuple[str, str, np.ndarray, bool]  # an output: name, V2 datatype, values, binary (HTTP only)
# Triton's names of the extensions implemented (and only those)
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration", "statistics",
              "sequence", "sequence(string_id)"]


class DataPlane:
    """The service's operations; the REST layer turns HTTP into these calls and their results into HTTP."""

    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: Metrics):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics

    def server_metadata(self) -> dict:
        return {"name": "nnserve", "version": __version__, "extensions": EXTENSIONS}

    def ready(self) -> bool:
        return self.registry.is_ready()

    def model_index(self) -> dict:
        return {"models": self.registry.names()}

    def model_metadata(self, name: str, version: str | None) -> dict:
        model = self.registry.get(name, version)
        return model.describe([str(v) for v in self.registry.versions(name)])

    def model_config(self, name: str, version: str | None) -> dict:
        """The model configuration extension: Triton's JSON form, nnserve's own fields under parameters."""
        model = self.registry.get(name, version)
        return model.config.to_json(model.nnserve_parameters(), gpu=model.provider == "CUDAExecutionProvider")

    def model_statistics(self, name: str | None, version: str | None) -> dict:
        """The statistics extension: every ready version, or one model's, summed over all worker processes."""
        if name is None:
            keys = [(n, v) for n in self.registry.names() for v in self.registry.versions(n)]
        else:
            model = self.registry.get(name, version)  # unknown or not ready: Triton's errors
            keys = [(model.name, model.version)] if version is not None else [
                (model.name, v) for v in self.registry.versions(model.name)]
        statistics = self.metrics.statistics
        return {"model_stats": [statistics.model_stats(n, str(v)) for n, v in keys]}

    def model_ready(self, name: str, version: str | None) -> dict:
        model = self.registry.get(name, version)  # raises ModelNotReady (503) or ModelNotFound (404)
        return {"name": model.name, "version": model.version_str, "ready": True}

    def repository_index(self, ready_only: bool) -> list[dict]:
        entries = self.registry.index()
        return [e for e in entries if e["state"] == "READY"] if ready_only else entries

    def load_model(self, name: str, parameters=()) -> None:
        """Load or reload a model; a failed version is reported, and what was serving keeps serving. `parameters`:
        the names of the call's parameters (V2 lets a load carry a config or files, which nnserve refuses)."""
        if "config" in parameters or any(k.startswith("file:") for k in parameters):
            raise BadRequest("loading a model from a config or files in the request is not supported; "
                             "publish the version into the repository, then call load")
        states = self.registry.load(name)
        failed = [s for s in states if s.state == "UNAVAILABLE"]
        if failed:
            serving = self.registry.versions(name)
            raise BadRequest(f"failed to load model '{name}': " + "; ".join(
                f"version {s.version}: {s.reason}" for s in failed)
                + (f"; still serving version(s) {serving}" if serving else "; no version is serving"))

    def unload_model(self, name: str) -> None:
        self.registry.unload(name)

    def infer(self, name: str, version: str | None, decode: Callable[[int], InferRequest],
              encode: Callable[[LoadedModel, InferRequest, list[Result]], T]) -> tuple[T, LoadedModel]:
        """Run one V2 inference request, whatever the transport: `decode(max_elements)` gives the request,
        `encode(model, request, results)` the answer; results are (output, datatype, array, binary) tuples.
        Returns (the encoded answer, the model). Errors are ServiceError, for the transport to map."""
        model = self.registry.get(name, version)
        with self._observed(model) as timing:
            request = decode(self.settings.batch_limit(model.name) * MAX_SAMPLE_ELEMENTS)
            feed = check_request(model, request, model.max_batch_size)
            timing["decoded"] = time.perf_counter()
            if request.outputs is None:
                wanted = [(n, request.binary_default, 0) for n in model.output_names]
            else:
                wanted = [(o.name, o.binary, o.classification) for o in request.outputs]
            values = self._run(model, feed, [n for n, _, _ in wanted], timing, request)
            results = []
            for output, binary, top_k in wanted:
                if top_k:
                    results.append((output, "BYTES", classify(values[output], top_k, model.labels), binary))
                else:
                    results.append((output, model.outputs[output]["datatype"], values[output], binary))
            answer = encode(model, request, results)
            timing["encoded"] = time.perf_counter()
        return answer, model

    def predict(self, name: str, body: bytes) -> tuple[bytes, LoadedModel]:
        """The convenience endpoint: {"instances": [...]} in, {"predictions": [...]} in the task's terms out (JSON
        bytes; NaN and Infinity as those literals, as in an infer response)."""
        model = self.registry.get(name)
        if model.sequences is not None:
            raise BadRequest(f"model '{name}' keeps state between the requests of a sequence: send them to "
                             f"/v2/models/{name}/infer with parameters sequence_id, sequence_start and sequence_end")
        with self._observed(model) as timing:
            request = instances_request(model, body)
            feed = check_request(model, request, model.max_batch_size)
            timing["decoded"] = time.perf_counter()
            values = self._run(model, feed, model.output_names, timing)
            answer = {"model_name": model.name, "model_version": model.version_str,
                      "predictions": describe_predictions(model, values)}
            finite = all(v.dtype.kind != "f" or np.isfinite(v).all() for v in values.values())
            payload = dumps(answer) if finite else dumps_nonfinite(answer)
            timing["encoded"] = time.perf_counter()
        return payload, model

    def _run(self, model: LoadedModel, feed: dict, outputs: list[str], timing: dict,
             request: InferRequest | None = None) -> dict:
        """Run a checked feed: through the model's batcher, as one step of a sequence (a stateful model: the
        request's sequence parameters), or on its own."""
        bound = timing["metrics"]
        if model.batcher is not None:  # the batch's runner records its size and compute time
            values, started = model.batcher.run(model, feed, outputs)
            ran = time.perf_counter()
        else:
            started = time.perf_counter()
            values = model.run(feed, outputs) if model.sequences is None else run_step(model, request, feed, outputs)
            ran = time.perf_counter()
            timing["samples"] = samples = batch_size_of(feed)
            bound.observe_run(samples, ran - started)
        timing["started"], timing["ran"] = started, ran
        bound.queue_duration.observe(started - timing["start"])
        return values

    def _observed(self, model: LoadedModel) -> "Observation":
        return Observation(self.metrics, model)


class Observation:
    """Counts a request by outcome and times it, around the `with` block; errors pass through to the transport.
    The block fills in the timing dict it is given (Triton's phases: decode and check, wait, run, encode)."""

    __slots__ = ("metrics", "bound", "timing")

    def __init__(self, metrics: Metrics, model: LoadedModel):
        self.metrics = metrics
        self.bound = metrics.for_model(model.name, model.version_str)
        self.timing = {"start": time.perf_counter(), "metrics": self.bound}

    def __enter__(self) -> dict:
        self.metrics.in_flight.inc()
        return self.timing

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            outcome = "success"
        elif isinstance(exc, ServiceError):
            outcome = "client_error" if exc.status_code < 500 else "server_error"
        else:
            outcome = "server_error"
        self.metrics.in_flight.dec()
        bound, timing = self.bound, self.timing
        start, end = timing["start"], time.perf_counter()
        bound.request_duration.observe(end - start)
        bound.outcomes[outcome].inc()
        if outcome == "success":
            bound.stats.success(start, timing["decoded"], timing["started"], timing["ran"], timing["encoded"],
                                end, timing.get("samples", 0))
        else:
            bound.stats.failure(start, end)
        return False


def describe_predictions(model: LoadedModel, values: dict) -> list:
    """Predictions in the task's terms: labels with probabilities, values, score and flag, images. A model with no
    nnserve metadata gets its outputs: one output's values per instance, or an object of every output's."""
    task = model.metadata.get("task")
    if task is None:
        first = values[model.output_names[0]]
        if len(values) == 1:
            return first.tolist()
        if not model.batching:
            return [{name: value.tolist() for name, value in values.items()}]
        return [{name: value[i].tolist() for name, value in values.items()} for i in range(len(first))]
    return PREDICTIONS[task](model, values)


def _first_output(model: LoadedModel, values: dict) -> np.ndarray:
    return values[model.output_names[0]]


def _per_sample(array: np.ndarray) -> np.ndarray:
    """config.pbtxt's dims [1] for a per-sample scalar: predictions are numbers."""
    return array.reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array


def _multiclass(model: LoadedModel, values: dict) -> list:
    labels = model.metadata.get("labels") or []
    return [{"label": labels[int(row.argmax())], "probability": float(row.max()),
             "probabilities": dict(zip(labels, map(float, row)))} for row in _first_output(model, values)]


def _binary(model: LoadedModel, values: dict) -> list:
    labels = model.metadata.get("labels") or []
    positive = model.metadata.get("task_params", {}).get("positive_label", labels[-1])
    negative = next(label for label in labels if label != positive)
    return [{"label": positive if p >= 0.5 else negative, "probability": float(p), "positive_label": positive}
            for p in _per_sample(_first_output(model, values))]


def _anomaly(model: LoadedModel, values: dict) -> list:
    """The score is the output that metadata declares as `task_params.score_output`."""
    params = model.metadata["task_params"]
    threshold, output = params["threshold"], params.get("score_output")
    if output not in values:
        raise BadRequest(f"model '{model.name}': its metadata names no score output (task_params.score_output), so "
                         f"/v1 cannot flag anomalies; ask /v2/models/{model.name}/infer for its outputs")
    scores = values[output]
    return [{"score": float(s), "anomaly": bool(s > threshold), "threshold": threshold} for s in scores.reshape(-1)]


def _values(model: LoadedModel, values: dict) -> list:
    """Regression: one value per sample."""
    return _per_sample(_first_output(model, values)).tolist()


def _forecasts(model: LoadedModel, values: dict) -> list:
    """Forecasting: the next H values of each sample."""
    return _first_output(model, values).tolist()


def _generated(model: LoadedModel, values: dict) -> list:
    """What a generator made: text from a BYTES output (the text generator), else an image (the GAN)."""
    if model.outputs[model.output_names[0]]["datatype"] == "BYTES":
        return [{"text": str(text)} for text in _per_sample(_first_output(model, values))]
    return [{"image": image.tolist()} for image in _first_output(model, values)]


PREDICTIONS = {"multiclass": _multiclass, "binary": _binary, "regression": _values, "forecasting": _forecasts,
               "anomaly": _anomaly, "generation": _generated}
"""How each task of service.artifact.TASKS describes its predictions."""
