"""What the HTTP endpoints do, without HTTP: metadata, health and inference over the registry."""

from __future__ import annotations

import time

from service import __version__
from service.errors import BadRequest, ServiceError
from service.metrics import Metrics
from service.protocol import decode_infer_request, encode_infer_response
from service.registry import ModelRegistry
from service.settings import Settings

EXTENSIONS = ["binary_tensor_data", "model_repository"]  # advertise only what is implemented


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

    def model_ready(self, name: str, version: str | None) -> dict:
        model = self.registry.get(name, version)  # raises ModelNotReady (503) or ModelNotFound (404)
        return {"name": model.name, "version": model.version_str, "ready": True}

    def repository_index(self, ready_only: bool) -> list[dict]:
        entries = self.registry.index()
        return [e for e in entries if e["state"] == "READY"] if ready_only else entries

    def load_model(self, name: str) -> None:
        """Load or reload a model; a failed version is reported, and what was serving keeps serving."""
        states = self.registry.load(name)
        failed = [s for s in states if s.state == "UNAVAILABLE"]
        if failed:
            serving = self.registry.versions(name)
            raise BadRequest(f"failed to load model '{name}': " + "; ".join(
                f"version {s.version}: {s.reason}" for s in failed)
                + (f"; still serving version(s) {serving}" if serving else "; no version is serving"))

    def unload_model(self, name: str) -> None:
        self.registry.unload(name)

    def infer(self, name: str, version: str | None, body: bytes,
              header_length: int | None) -> tuple[bytes, int | None]:
        """Run one V2 inference request; return the response body and its binary header length, if any."""
        model = self.registry.get(name, version)
        metrics = self.metrics
        started = time.perf_counter()
        outcome = "server_error"
        metrics.in_flight.inc()
        try:
            request = decode_infer_request(body, header_length)
            feed = model.check_request(request, self.settings.max_batch_size)
            if request.outputs is None:
                wanted = [(n, request.binary_default) for n in model.output_names]
            else:
                wanted = [(o.name, o.binary) for o in request.outputs]
            values = model.run(feed, [n for n, _ in wanted])
            results = [(n, model.outputs[n]["datatype"], values[n], binary) for n, binary in wanted]
            response = encode_infer_response(model.name, model.version_str, request.id, results)
            outcome = "success"
            return response
        except ServiceError as exc:
            outcome = "client_error" if exc.status_code < 500 else "server_error"
            raise
        finally:
            metrics.in_flight.dec()
            metrics.request_duration.labels(model.name, model.version_str).observe(time.perf_counter() - started)
            metrics.requests.labels(model.name, model.version_str, outcome).inc()

