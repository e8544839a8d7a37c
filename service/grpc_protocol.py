"""The Open Inference Protocol's gRPC messages in the data plane's terms: the ModelInfer request decoded into an
InferRequest, the answer encoded as a ModelInferResponse, errors as status codes, and each call's log.

The messages are Triton's generated modules (`service.triton`, copied from the tritonclient wheel): the wire
format of the client users run, with no code generation step and no tritonclient in the serving install.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import grpc
import numpy as np
import orjson
from google.protobuf.message import DecodeError

from service.dataplane import DataPlane
from service.errors import BadRequest, ServiceError, join_problems
from service.handlers import request_id_of
from service.protocol import InferRequest, RequestedOutput, RequestInput, clip
from service.tensordata import MAX_DIMS, NUMPY_DTYPES, decode_bytes_elements, encode_bytes_elements
from service.triton import service_pb2

log = logging.getLogger(__name__)
access_log = logging.getLogger("nnserve.access")
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
                501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE}
# InferTensorContents' typed fields by V2 datatype (FP16 and BF16 have none: raw contents only, as in Triton)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _parameter(value) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def decode_grpc_request(message: service_pb2.ModelInferRequest, max_elements: int) -> InferRequest:
    """A ModelInferRequest as the transport-neutral InferRequest; raise BadRequest listing every problem with its
    form (tensor data problems are kept for the model's own checks, as over HTTP)."""
    problems: list[str] = []
    data_problems: list[str] = []
    if not message.inputs:
        problems.append("inputs: expected at least one tensor")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        problems.append(f"raw_input_contents: {len(raw)} given for {len(message.inputs)} inputs; send one for each "
                        "input, or none and use contents")
        raw = []
    inputs = []
    for i, tensor in enumerate(message.inputs):
        where = f"input '{clip(tensor.name)}'" if tensor.name else f"inputs[{i}]"
        if not tensor.name:
            problems.append(f"inputs[{i}].name: expected a non-empty string")
        shape = list(tensor.shape)
        if len(shape) > MAX_DIMS or any(d < 0 or d >= 2**40 for d in shape):
            problems.append(f"{where}.shape: expected at most {MAX_DIMS} non-negative integers, got {shape[:16]}")
            continue
        datatype = tensor.datatype
        if datatype not in NUMPY_DTYPES:
            problems.append(f"{where}.datatype: expected one of {sorted(NUMPY_DTYPES)}, got {datatype[:32]!r}")
            continue
        count = math.prod(shape)
        if count > max_elements or max(shape, default=0) > max_elements:
            problems.append(f"{where}.shape: {shape} holds {count} elements, more than the limit of {max_elements}")
            continue
        try:
            array = _tensor_data(where, tensor, raw[i] if raw else None, datatype, count)
        except BadRequest as exc:
            data_problems.append(exc.message)
            array = None
        inputs.append(RequestInput(tensor.name, datatype, shape, None if array is None else array.reshape(shape)))
    outputs = None
    if message.outputs:
        outputs, seen = [], set()
        for out in message.outputs:
            if out.name in seen:
                problems.append(f"output '{clip(out.name)}' is requested more than once")
                continue
            seen.add(out.name)
            top_k = _parameter(out.parameters["classification"]) if "classification" in out.parameters else 0
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
                problems.append(f"output '{clip(out.name)}'.parameters.classification: expected a positive integer "
                                f"(top-k), got {top_k!r:.40}")
                continue
            outputs.append(RequestedOutput(out.name, True, top_k))
    if problems:
        raise BadRequest("invalid inference request: " + join_problems(problems))
    parameters = {key: _parameter(value) for key, value in message.parameters.items()}
    return InferRequest(inputs, outputs, True, message.id or None, data_problems, parameters)


def _tensor_data(where: str, tensor, chunk: bytes | None, datatype: str, count: int) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    field = CONTENTS.get(datatype)
    typed = tensor.HasField("contents") and field is not None and len(getattr(tensor.contents, field)) > 0
    if chunk is not None:
        if typed:
            raise BadRequest(f"{where}: has both contents and raw_input_contents; send one of them")
        if datatype == "BYTES":
            return decode_bytes_elements(chunk, count, where)
        if len(chunk) != count * dtype.itemsize:
            raise BadRequest(f"{where}: shape {list(tensor.shape)} of {datatype} needs {count * dtype.itemsize} "
                             f"bytes of raw contents, got {len(chunk)}")
        return np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))
    if field is None:
        raise BadRequest(f"{where}: {datatype} data must be sent as raw_input_contents")
    values = getattr(tensor.contents, field)
    if not values and count:
        others = sorted({f.name for f, _ in tensor.contents.ListFields()} - {field})
        if others:
            raise BadRequest(f"{where}.contents: {datatype} is read from {field}, got {', '.join(others)}")
    if len(values) != count:
        raise BadRequest(f"{where}.contents.{field}: shape needs {count} elements, got {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        for j, value in enumerate(values):
            try:
                array[j] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"{where}: element {j} is not valid UTF-8; ONNX Runtime's string tensors hold "
                                 "text, so BYTES elements must be UTF-8") from None
        return array
    wide = np.asarray(values)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise BadRequest(f"{where}.contents.{field}: values out of range for {datatype}")
    return wide.astype(dtype)


def encode_grpc_response(model, request: InferRequest, results) -> service_pb2.ModelInferResponse:
    """Outputs as raw_output_contents (tritonclient's as_numpy reads only those), BYTES length-prefixed."""
    response = service_pb2.ModelInferResponse(model_name=model.name, model_version=model.version_str,
                                              id=request.id or "")
    for name, datatype, array, _ in results:
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            response.raw_output_contents.append(encode_bytes_elements(array))
        else:
            response.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
                                                .tobytes())
    return response


def infer_message(plane: DataPlane, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
    """One ModelInfer call over the data plane, whichever server took it (grpcio, or nginx through the HTTP
    workers); raises ServiceError."""
    answer, _ = plane.infer(request.model_name, request.model_version or None,
                            lambda max_elements: decode_grpc_request(request, max_elements), encode_grpc_response)
    return answer


def run_call(method: str, work: Callable, *args) -> tuple[Any, grpc.StatusCode, str]:
    """`work(*args)` as a call's outcome: (its result, OK, "") or (None, the status of its error, its message).
    A ServiceError's HTTP status maps to the gRPC code; anything else is a bug, logged and answered INTERNAL."""
    try:
        return work(*args), grpc.StatusCode.OK, ""
    except ServiceError as exc:
        return None, STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL), exc.message
    except Exception:  # a bug: logged with its traceback, answered as INTERNAL
        log.exception("unhandled error in gRPC %s", method)
        return None, grpc.StatusCode.INTERNAL, "internal server error"


class Malformed:
    """A request message that could not be parsed; the RPC answers INVALID_ARGUMENT with `reason`."""

    def __init__(self, kind: str, error: Exception):
        self.reason = f"the request is not a valid {kind} message ({error})"


def parser(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as exc:  # grpc would answer UNKNOWN with the exception's repr
            return Malformed(message_class.DESCRIPTOR.name, exc)
    return parse


class CallLog:
    """Counts each call in nnserve_grpc_requests_total, and writes its access log line when that log is on."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.counters: dict[tuple[str, str], Any] = {}

    def count(self, method: str, code: grpc.StatusCode, started: float, request=None) -> None:
        key = (method, code.name)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = self.plane.metrics.grpc_requests.labels(method, code.name)
        counter.inc()
        if access_log.isEnabledFor(logging.INFO):
            model = getattr(request, "model_name", None) or getattr(request, "name", None) or None
            version = getattr(request, "model_version", None) or getattr(request, "version", None) or None
            access_log.info(orjson.dumps({
                "request_id": request_id_of(getattr(request, "id", None)), "protocol": "grpc", "method": method,
                "code": code.name, "model": model, "version": version,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)}).decode())

