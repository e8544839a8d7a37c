"""ModelInfer calls that nginx proxies to the HTTP workers (service/grpc_frontend.py), answered by the fast path.

A call arrives as one HTTP POST whose body is the call's gRPC message; the answer is the framed response
message, with the call's status in two headers that nginx turns into the call's trailers.
"""

from __future__ import annotations

import time

import grpc

from service.compression import decompress
from service.dataplane import DataPlane
from service.errors import BadRequest, ServiceError
from service.grpc_protocol import CallLog, Malformed, infer_message, parser, run_call
from service.triton import service_pb2


def _percent_encoded(text: str) -> str:
    """A grpc-message value: UTF-8, with bytes outside printable ASCII and '%' percent-encoded (gRPC's rule)."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode())


class ProxiedModelInfer:
    """A gRPC message in, a gRPC message and a status out, through the same DataPlane, decoding, metrics and
    access log as grpcio's ModelInfer (service/grpc_service.py)."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.calls = CallLog(plane)
        self.parse = parser(service_pb2.ModelInferRequest)

    def answer(self, body: bytes, encoding: str | None) -> tuple[bytes, int, str]:
        """(the framed response message or b"", the gRPC status code, its percent-encoded message or "")."""
        started = time.perf_counter()
        payload, request = b"", None
        message, code, error = run_call("ModelInfer", self._message, body, encoding)
        if code == grpc.StatusCode.OK:
            request = self.parse(message)
            if isinstance(request, Malformed):
                code, error = grpc.StatusCode.INVALID_ARGUMENT, request.reason
            else:
                answer, code, error = run_call("ModelInfer", self._infer, request)
                payload = answer or b""
        self.calls.count("ModelInfer", code, started, request)
        return payload, code.value[0], _percent_encoded(error)

    def _infer(self, request: service_pb2.ModelInferRequest) -> bytes:
        """The call's answer as one framed message: not compressed, a 4-byte big-endian length, the message."""
        data = infer_message(self.plane, request).SerializeToString()
        return b"\0" + len(data).to_bytes(4, "big") + data

    def _message(self, body: bytes, encoding: str | None) -> bytes:
        """The one message of a unary call's body: a compressed flag, a 4-byte big-endian length, the message."""
        if len(body) < 5 or body[0] > 1 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            raise BadRequest("a unary call carries one length-prefixed message; this body does not")
        if body[0] == 0:
            return body[5:]
        encoding = (encoding or "identity").strip().lower()
        if encoding not in ("gzip", "deflate"):
            raise ServiceError(f"grpc-encoding '{encoding[:32]}' is not supported for a compressed message; "
                               "use gzip or deflate", 501)
        return decompress(body[5:], encoding, self.plane.settings.max_body_bytes)
