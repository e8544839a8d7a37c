"""The inference hot path as plain WSGI, in front of the Flask app.

A Flask request costs more CPU than an MLP's whole inference (routing, the request and response objects, the
before/after hooks). `POST .../infer` (with a Content-Length or a chunked body) and the health probes are
answered here from the WSGI environ directly, with the same behaviour as the Flask routes: the same DataPlane
call, the same JSON errors, X-Request-ID, the access log line and the HTTP request counter. Everything else, and
an infer request whose Content-Length is over the size limit (Flask answers 413), goes to Flask. With nginx in
front of the gRPC port (service/grpc_frontend.py), the ModelInfer calls it proxies are answered here too.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time

import orjson

from service.dataplane import DataPlane
from service.errors import BadRequest, PayloadTooLarge, ServiceError
from service.grpc_frontend import MODEL_INFER, Upstream
from service.protocol import (HEADER_LENGTH, compress, decode_infer_request, decompress, dumps,
                              encode_infer_response)

log = logging.getLogger(__name__)
access_log = logging.getLogger("nnserve.access")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # echoed in a header and logged: keep it plain
INFER_RE = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
HEADER_LENGTH_RE = re.compile(r"[0-9]{1,12}")
INFER_ROUTE = "/v2/models/<name>/infer"
INFER_VERSION_ROUTE = "/v2/models/<name>/versions/<version>/infer"
STATUS_LINES = {200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
                404: "404 Not Found", 413: "413 Request Entity Too Large", 415: "415 Unsupported Media Type",
                500: "500 Internal Server Error", 503: "503 Service Unavailable"}
READY = orjson.dumps({"ready": True})
NOT_READY = orjson.dumps({"ready": False})
LIVE = orjson.dumps({"live": True})


DISCARD_LIMIT = 64 * 1024 * 1024
"""How much of an over-limit body is read and thrown away so that the client sees the 413."""


def discard_unread_body(environ) -> None:
    """Read (and drop) what is left of an over-limit body, up to DISCARD_LIMIT bytes.

    Closing the connection with the body unread makes the kernel answer the client's remaining bytes with a
    reset, and a client still sending (urllib, tritonclient) then sees a broken pipe instead of the JSON error.
    Draining a bounded amount is nginx's "lingering close"; a larger body still gets the reset.
    """
    stream = environ.get("wsgi.input")
    left = DISCARD_LIMIT
    try:
        while stream is not None and left > 0:
            chunk = stream.read(min(65536, left))
            if not chunk:
                break
            left -= len(chunk)
    except (OSError, ValueError):
        pass


def request_id_of(given: str | None) -> str:
    """The client's X-Request-ID when it is plain (letters, digits, `._:-`, up to 128), else a new one: 128 random
    bits as 32 hex digits (uuid4().hex costs four times as much, on every response)."""
    return given if given and REQUEST_ID_RE.fullmatch(given) else os.urandom(16).hex()


def log_access(request_id: str, method: str, route: str, status: int, model: str | None, version: str | None,
               started: float) -> None:
    """One JSON line per request (never the body), with the model and version once known; built only if logged."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(orjson.dumps({
            "request_id": request_id, "method": method, "route": route, "status": status, "model": model,
            "version": version, "duration_ms": round((time.perf_counter() - started) * 1000, 3)}).decode())


def encode_http(model, request, results) -> tuple[bytes, int | None]:
    """An infer answer as V2 JSON with Triton's binary tensors: (body, binary header length or None)."""
    return encode_infer_response(model.name, model.version_str, request.id, results)


def infer_http(plane: DataPlane, name: str, version: str | None, body: bytes, header_length: str | None,
               content_encoding: str | None, accept_encoding: str | None) -> tuple[bytes, list[tuple[str, str]], object]:
    """The HTTP infer call, for both the fast path and the Flask route: the body as read and the request's
    Inference-Header-Content-Length, Content-Encoding and Accept-Encoding headers (None: absent). Returns
    (payload, response headers, model); raises ServiceError."""
    length = None
    if header_length is not None:
        if not HEADER_LENGTH_RE.fullmatch(header_length.strip()):
            raise BadRequest(f"{HEADER_LENGTH}: expected a non-negative integer, got {header_length[:32]!r}")
        length = int(header_length)
    # tritonclient sends no Content-Type, so the body is read raw whatever it says.
    body = decompress(body, content_encoding, plane.settings.max_body_bytes)
    (payload, binary_header), model = plane.infer(
        name, version, lambda max_elements: decode_infer_request(body, length, max_elements), encode_http)
    headers = []
    if accept_encoding:
        payload, encoding = compress(payload, accept_encoding)
        if encoding:
            headers.append(("Content-Encoding", encoding))
    if binary_header is None:
        headers.append(("Content-Type", "application/json"))
    else:
        headers.append(("Content-Type", "application/octet-stream"))
        headers.append((HEADER_LENGTH, str(binary_header)))
    return payload, headers, model


class FastPath:
    """WSGI middleware: answers infer and health requests itself, passes the rest to `app`."""

    def __init__(self, app, plane: DataPlane, grpc_upstream: Upstream | None = None):
        self.app = app
        self.plane = plane
        self.max_body = plane.settings.max_body_bytes
        self.counters: dict[tuple[str, str, int], object] = {}  # bound children of nnserve_http_requests
        self.grpc = None  # with nginx in front of gRPC: ModelInfer calls, answered by grpc_service
        if grpc_upstream is not None:
            from service.grpc_service import ProxiedModelInfer  # grpcio only where gRPC is served

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
        elif method == "GET" and path in ("/v2/health/ready", "/v2/health/live"):
            started = time.perf_counter()
            if path.endswith("live"):
                return self._respond(environ, start_response, started, path, 200, LIVE)
            ready = self.plane.ready()
            return self._respond(environ, start_response, started, path, 200 if ready else 503,
                                 READY if ready else NOT_READY)
        return self.app(environ, start_response)

    def _infer(self, environ, start_response, name: str, version: str | None, length: int | None):
        """`length`: the Content-Length, or None for a chunked body."""
        started = time.perf_counter()
        route = INFER_ROUTE if version is None else INFER_VERSION_ROUTE
        model_name = model_version = None
        try:
            if length is None:  # chunked: read up to one byte past the limit
                body = environ["wsgi.input"].read(self.max_body + 1)
                if len(body) > self.max_body:
                    discard_unread_body(environ)
                    raise PayloadTooLarge(f"request body is larger than the limit of {self.max_body} bytes")
            else:
                body = environ["wsgi.input"].read(length) if length else b""
                if len(body) != length:
                    raise BadRequest(f"request body: Content-Length is {length} but the connection ended after "
                                     f"{len(body)} bytes")
            payload, headers, model = infer_http(
                self.plane, name, version, body, environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"),
                environ.get("HTTP_CONTENT_ENCODING"), environ.get("HTTP_ACCEPT_ENCODING"))
            model_name, model_version = model.name, model.version_str
            status = 200
        except ServiceError as exc:
            status, payload, headers = exc.status_code, dumps({"error": exc.message}), []
        except Exception:  # a bug: logged with its traceback, answered as Flask's handler would
            log.exception("unhandled error on POST %s", environ.get("PATH_INFO", "")[:200])
            status, payload, headers = 500, dumps({"error": "internal server error"}), []
        return self._respond(environ, start_response, started, route, status, payload, headers,
                             model_name, model_version)

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
        method = environ["REQUEST_METHOD"]
        key = (route, method, status)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = self.plane.metrics.http_requests.labels(route, method, str(status))
        counter.inc()
        log_access(request_id, method, route, status, model, version, started)
        start_response(STATUS_LINES.get(status, f"{status} Error"), headers)
        return [payload]
