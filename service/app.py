"""The Flask application factory: settings -> metrics -> registry -> data plane -> routes and error handlers."""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import threading
import time

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from service import handlers, rest
from service.control import Control
from service.dataplane import DataPlane
from service.errors import ServiceError
from service.fastpath import FastPath
from service.grpc_frontend import Upstream
from service.handlers import RequestLog, discard_unread_body, request_id_of
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, serve_grpc: bool = False) -> Flask:
    """Build the app; models load in the background (or before returning, if background_load is off). With
    `serve_grpc` (the server's worker processes) the gRPC endpoint starts too, on the same data plane."""
    settings = settings or Settings.from_env()
    require_device(settings.device)
    metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR"), settings.state_dir or None)
    registry = ModelRegistry(settings, metrics, Control(settings.state_dir) if settings.state_dir else None)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Werkzeug answers a path with '//' (a model name of '/' sent as %2F) with an HTML 308 to the path with the
    # slashes merged, which is another route ('/v2/models///ready' -> '/v2/models/ready'): a JSON 404 instead.
    app.url_map.merge_slashes = False
    plane = app.extensions["nnserve"] = DataPlane(settings, registry, metrics)
    app.register_blueprint(rest.bp)
    _register_error_handlers(app)

    @app.before_request
    def start_request():
        g.started = time.perf_counter()
        g.request_id = request_id_of(request.headers.get("X-Request-ID"))

    requests = RequestLog(plane)

    @app.after_request
    def finish_request(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        response.headers["X-Request-ID"] = g.request_id
        requests.finish(g.request_id, request.method, route, response.status_code, g.get("model"),
                        g.get("version"), g.started)
        return response

    upstream = Upstream.from_env() if serve_grpc and settings.grpc_port else None
    # infer and health without Flask's per-request cost
    app.wsgi_app = FastPath(app.wsgi_app, plane, upstream, requests)
    if serve_grpc and settings.grpc_port:
        from service.grpc_service import GrpcServer  # grpcio only where gRPC is served

        # behind nginx (service/grpc_frontend.py) the grpcio server listens on the loopback port nginx proxies to
        address = upstream.grpc_address if upstream else settings.grpc_address
        app.extensions["nnserve-grpc"] = GrpcServer(plane, address, settings.threads).start()

    def load_then_watch() -> None:
        registry.load_all()
        registry.start_watching()

    if settings.background_load:
        threading.Thread(target=load_then_watch, name="model-loader", daemon=True).start()
    else:
        load_then_watch()
    if serve_grpc:  # a server's worker: its watcher stops when the worker exits, before the interpreter's teardown
        multiprocessing.util.Finalize(registry, registry.stop, exitpriority=5)  # granian's workers
        atexit.register(registry.stop)  # gunicorn's workers
    return app


def require_device(device: str) -> None:
    """Refuse to start with device 'cuda' when this ONNX Runtime has no CUDA provider (it would run on the CPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"device 'cuda' was asked for, but this ONNX Runtime offers only {available}; "
                           "install onnxruntime-gpu with its CUDA libraries, or use --device auto or cpu")
    log.info("device %s: ONNX Runtime providers available: %s", device, available)


def _register_error_handlers(app: Flask) -> None:
    """Every error is JSON `{"error": ...}`: V2 clients cannot read Flask's HTML pages."""

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        status, document, headers = handlers.error_answer(exc)
        response = rest.json_response(document, status)
        response.headers.extend(headers)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            discard_unread_body(request.environ)
        messages = {
            404: f"no such endpoint: {request.method} {request.path[:200]}",
            405: f"method {request.method} is not allowed for {request.path[:200]}",
            413: f"request body is larger than the limit of {app.config['MAX_CONTENT_LENGTH']} bytes",
        }
        response = rest.json_response({"error": messages.get(exc.code, exc.description)}, exc.code or 500)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path[:200])
        return rest.json_response(handlers.INTERNAL_ERROR, 500)
