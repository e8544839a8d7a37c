"""What the HTTP endpoints on the request path answer, whichever layer takes the request.

The WSGI fast path (service/fastpath.py) answers most infer and health requests; the Flask routes
(service/rest.py) answer the rest of them. Both call these: the infer handler over the data plane, the health
probes, the error answer of a ServiceError, and each request's counter and access log line.
"""

from __future__ import annotations

import logging
import os
import re
import time

import orjson

from service.compression import compress, decompress
from service.dataplane import DataPlane
from service.errors import BadRequest, ServiceError
from service.protocol import HEADER_LENGTH, decode_infer_request, encode_infer_response

access_log = logging.getLogger("nnserve.access")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # echoed in a header and logged: keep it plain
HEADER_LENGTH_RE = re.compile(r"[0-9]{1,12}")
HEALTH_PATHS = ("/v2/health/ready", "/v2/health/live")
LIVE = orjson.dumps({"live": True})
READY = orjson.dumps({"ready": True})
NOT_READY = orjson.dumps({"ready": False})
INTERNAL_ERROR = {"error": "internal server error"}  # the answer to a bug, which is logged with its traceback
DISCARD_LIMIT = 64 * 1024 * 1024
"""How much of an over-limit body is read and thrown away so that the client sees the 413."""


def infer(plane: DataPlane, name: str, version: str | None, body: bytes, header_length: str | None,
          content_encoding: str | None, accept_encoding: str | None) -> tuple[bytes, list[tuple[str, str]], object]:
    """The HTTP infer call: the body as read and the request's Inference-Header-Content-Length, Content-Encoding
    and Accept-Encoding headers (None: absent). Returns (payload, response headers, model); raises ServiceError."""
    length = None
    if header_length is not None:
        if not HEADER_LENGTH_RE.fullmatch(header_length.strip()):
            raise BadRequest(f"{HEADER_LENGTH}: expected a non-negative integer, got {header_length[:32]!r}")
        length = int(header_length)
    # tritonclient sends no Content-Type, so the body is read raw whatever it says.
    body = decompress(body, content_encoding, plane.settings.max_body_bytes)
    (payload, binary_header), model = plane.infer(
        name, version, lambda max_elements: decode_infer_request(body, length, max_elements), _encode)
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


def _encode(model, request, results) -> tuple[bytes, int | None]:
    """An infer answer as V2 JSON with Triton's binary tensors: (body, binary header length or None)."""
    return encode_infer_response(model.name, model.version_str, request.id, results)


def health(plane: DataPlane, path: str) -> tuple[int, bytes]:
    """The answer to a health probe, /v2/health/live or /v2/health/ready: (status, JSON body)."""
    if path.endswith("live"):
        return 200, LIVE
    return (200, READY) if plane.ready() else (503, NOT_READY)


def error_answer(exc: ServiceError) -> tuple[int, dict, list[tuple[str, str]]]:
    """A ServiceError as (status, JSON document, extra headers): `{"error": message}`, with the challenge that
    RFC 9110 asks of a 401."""
    headers = [("WWW-Authenticate", 'Bearer realm="nnserve repository"')] if exc.status_code == 401 else []
    return exc.status_code, {"error": exc.message}, headers


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


class RequestLog:
    """Counts each HTTP request in nnserve_http_requests_total and writes its access log line when that log is
    on; the counter's children are bound once per (route, method, status)."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.counters: dict[tuple[str, str, int], object] = {}

    def finish(self, request_id: str, method: str, route: str, status: int, model: str | None,
               version: str | None, started: float) -> None:
        key = (route, method, status)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = self.plane.metrics.http_requests.labels(route, method, str(status))
        counter.inc()
        if access_log.isEnabledFor(logging.INFO):  # one JSON line per request (never the body)
            access_log.info(orjson.dumps({
                "request_id": request_id, "method": method, "route": route, "status": status, "model": model,
                "version": version, "duration_ms": round((time.perf_counter() - started) * 1000, 3)}).decode())
