"""The inference hot path as plain WSGI, in front of the Flask app.

A Flask request costs more CPU than an MLP's whole inference (routing, the request and response objects, the
before/after hooks). `POST .../infer` (with a Content-Length or a chunked body) and the health probes are
answered here from the WSGI environ directly, by the same handlers as the Flask routes (service/handlers.py):
the same DataPlane call, the same JSON errors, X-Request-ID, the access log line and the HTTP request counter.
Everything else, and an infer request whose Content-Length is over the size limit (Flask answers 413), goes to
Flask. With nginx in front of the gRPC port (service/grpc_frontend.py), the ModelInfer calls it proxies are
answered here too.
"""

from __future__ import annotations

import hmac
import logging
import re
import time

from service import handlers
from service.dataplane import DataPlane
from service.errors import BadRequest, PayloadTooLarge, ServiceError
from service.grpc_frontend import MODEL_INFER, Upstream
from service.handlers import RequestLog, discard_unread_body, request_id_of
from service.protocol import dumps

log = logging.getLogger(__name__)
INFER_RE = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
INFER_ROUTE = "/v2/models/<name>/infer"
INFER_VERSION_ROUTE = "/v2/models/<name>/versions/<version>/infer"
STATUS_LINES = {200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
                404: "404 Not Found", 413: "413 Request Entity Too Large", 415: "415 Unsupported Media Type",
                500: "500 Internal Server Error", 503: "503 Service Unavailable"}


class FastPath:
    """WSGI middleware: answers infer and health requests itself, passes the rest to `app`."""

    def __init__(self, app, plane: DataPlane, grpc_upstream: Upstream | None = None,
                 requests: RequestLog | None = None):
        self.app = app
        self.plane = plane
        self.max_body = plane.settings.max_body_bytes
        self.requests = requests or RequestLog(plane)
        self.grpc = None  # with nginx in front of gRPC: ModelInfer calls, answered by grpc_proxied
        if grpc_upstream is not None:
            from service.grpc_proxied import ProxiedModelInfer  # grpcio only where gRPC is served

            self.grpc, self.grpc_secret = ProxiedModelInfer(plane), grpc_upstream.secret.encode()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if method == "POST" and path.endswith("/infer"):
            match = INFER_RE.fullmatch(path.encode("latin-1").decode("utf-8", "replace"))  # PEP 3333
            length = environ.get("CONTENT_LENGTH")
            if match and length and length.isascii() and length.isdigit() and int(length) <= self.max_body:
                return self._infer(environ, start_response, match.group(1), match.group(2), int(length))
            if match and not length and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
                return self._infer(environ, start_response, match.group(1), match.group(2), None)
        elif method == "POST" and path == MODEL_INFER and self.grpc is not None:
            secret = environ.get("HTTP_X_NNSERVE_GRPC", "")
            if hmac.compare_digest(secret.encode(), self.grpc_secret):  # from nnserve's nginx only
                return self._grpc_infer(environ, start_response)
        elif method == "GET" and path in handlers.HEALTH_PATHS:
            started = time.perf_counter()
            status, payload = handlers.health(self.plane, path)
            return self._respond(environ, start_response, started, path, status, payload)
        return self.app(environ, start_response)

    def _infer(self, environ, start_response, name: str, version: str | None, length: int | None):
        """`length`: the Content-Length, or None for a chunked body."""
        started = time.perf_counter()
        route = INFER_ROUTE if version is None else INFER_VERSION_ROUTE
        model_name = model_version = None
        try:
            body = self._read_body(environ, length)
            payload, headers, model = handlers.infer(
                self.plane, name, version, body, environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"),
                environ.get("HTTP_CONTENT_ENCODING"), environ.get("HTTP_ACCEPT_ENCODING"))
            model_name, model_version = model.name, model.version_str
            status = 200
        except ServiceError as exc:
            status, document, extra = handlers.error_answer(exc)
            payload, headers = dumps(document), [("Content-Type", "application/json"), *extra]
        except Exception:  # a bug: logged with its traceback, answered as Flask's handler would
            log.exception("unhandled error on POST %s", environ.get("PATH_INFO", "")[:200])
            status, payload, headers = 500, dumps(handlers.INTERNAL_ERROR), []
        return self._respond(environ, start_response, started, route, status, payload, headers,
                             model_name, model_version)

    def _read_body(self, environ, length: int | None) -> bytes:
        """The whole body: `length` bytes, or a chunked one up to the size limit (413 past it)."""
        if length is None:  # chunked: read up to one byte past the limit
            body = environ["wsgi.input"].read(self.max_body + 1)
            if len(body) > self.max_body:
                discard_unread_body(environ)
                raise PayloadTooLarge(f"request body is larger than the limit of {self.max_body} bytes")
            return body
        body = environ["wsgi.input"].read(length) if length else b""
        if len(body) != length:
            raise BadRequest(f"request body: Content-Length is {length} but the connection ended after "
                             f"{len(body)} bytes")
        return body

    def _grpc_infer(self, environ, start_response):
        """A ModelInfer call proxied by nginx: its gRPC message as the body, its status in two headers that nginx
        turns into the call's trailers."""
        length = environ.get("CONTENT_LENGTH") or "0"
        body = environ["wsgi.input"].read(int(length)) if length.isdigit() else b""
        payload, status, message = self.grpc.answer(body, environ.get("HTTP_GRPC_ENCODING"))
        headers = [("Content-Type", "application/grpc"), ("X-Grpc-Status", str(status)),
                   ("Content-Length", str(len(payload)))]
        if message:
            headers.append(("X-Grpc-Message", message))
        start_response("200 OK", headers)
        return [payload]

    def _respond(self, environ, start_response, started: float, route: str, status: int, payload: bytes,
                 headers: list | None = None, model: str | None = None, version: str | None = None):
        headers = headers or [("Content-Type", "application/json")]
        request_id = request_id_of(environ.get("HTTP_X_REQUEST_ID"))
        headers.append(("Content-Length", str(len(payload))))
        headers.append(("X-Request-ID", request_id))
        self.requests.finish(request_id, environ["REQUEST_METHOD"], route, status, model, version, started)
        start_response(STATUS_LINES.get(status, f"{status} Error"), headers)
        return [payload]
