"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`, as tritonclient.grpc speaks it.

The messages are Triton's generated modules (`service.triton`, copied from the tritonclient wheel): the wire
format of the client users run, with no code generation step and no tritonclient in the serving install. Every
RPC calls the same DataPlane as HTTP, so models, validation, limits, batching, metrics and statistics are one;
errors map from the HTTP status to the gRPC code. The server is grpc.aio, one per worker process on a shared
port (SO_REUSEPORT), in a thread of its own; inference runs on a thread pool so that a long run does not hold
the event loop. With nginx in front (service/grpc_frontend.py), ModelInfer calls reach the HTTP workers instead,
and ProxiedModelInfer answers them there.
"""

from __future__ import annotations

import asyncio
import atexit
import hmac
import logging
import math
import multiprocessing.util
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import orjson
from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError

from service import __version__
from service.dataplane import EXTENSIONS, DataPlane
from service.errors import BadRequest, ModelNotFound, ModelNotReady, ServiceError, join_problems
from service.fastpath import request_id_of
from service.protocol import (MAX_DIMS, NUMPY_DTYPES, InferRequest, RequestedOutput, RequestInput, clip,
                              decode_bytes_elements, decompress, encode_bytes_elements)
from service.triton import model_config_pb2, service_pb2

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
SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
UNIMPLEMENTED = ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                 "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
                 "TraceSetting", "LogSettings")


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
    return InferRequest(inputs, outputs, True, message.id or None, data_problems)


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


class Malformed:
    """A request message that could not be parsed; the RPC answers INVALID_ARGUMENT with `reason`."""

    def __init__(self, kind: str, error: Exception):
        self.reason = f"the request is not a valid {kind} message ({error})"


def _parser(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as exc:  # grpc would answer UNKNOWN with the exception's repr
            return Malformed(message_class.DESCRIPTOR.name, exc)
    return parse


def _checked(servicer: "InferenceServicer", name: str):
    behaviour = getattr(servicer, name)

    async def unary(request, context):
        if isinstance(request, Malformed):
            servicer._count(name, grpc.StatusCode.INVALID_ARGUMENT, time.perf_counter())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await behaviour(request, context)
    return unary


def handlers(servicer: "InferenceServicer") -> grpc.GenericRpcHandler:
    """The service's method handlers (what service_pb2_grpc registers), with request parsing that answers a
    malformed message with INVALID_ARGUMENT."""
    methods = {}
    for method in SERVICE.methods:
        parse = _parser(message_factory.GetMessageClass(method.input_type))
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming:
            methods[method.name] = grpc.stream_stream_rpc_method_handler(
                getattr(servicer, method.name), request_deserializer=parse, response_serializer=serialize)
        else:
            methods[method.name] = grpc.unary_unary_rpc_method_handler(
                _checked(servicer, method.name), request_deserializer=parse, response_serializer=serialize)
    return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)


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


def _percent_encoded(text: str) -> str:
    """A grpc-message value: UTF-8, with bytes outside printable ASCII and '%' percent-encoded (gRPC's rule)."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode())


class ProxiedModelInfer:
    """ModelInfer calls that nginx proxies to the HTTP workers (service/grpc_frontend.py): a gRPC message in, a
    gRPC message and a status out, through the same DataPlane, decoding, metrics and access log as grpcio's."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.calls = CallLog(plane)
        self.parse = _parser(service_pb2.ModelInferRequest)

    def answer(self, body: bytes, encoding: str | None) -> tuple[bytes, int, str]:
        """(the framed response message or b"", the gRPC status code, its percent-encoded message or "")."""
        started = time.perf_counter()
        request = None
        try:
            request = self.parse(self._message(body, encoding))
            if isinstance(request, Malformed):
                raise BadRequest(request.reason)
            answer, _ = self.plane.infer(request.model_name, request.model_version or None,
                                         lambda max_elements: decode_grpc_request(request, max_elements),
                                         encode_grpc_response)
            data = answer.SerializeToString()
            code, payload, message = grpc.StatusCode.OK, b"\0" + len(data).to_bytes(4, "big") + data, ""
        except ServiceError as exc:
            code, payload, message = STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL), b"", exc.message
        except Exception:  # a bug: logged with its traceback, answered as INTERNAL
            log.exception("unhandled error in gRPC ModelInfer")
            code, payload, message = grpc.StatusCode.INTERNAL, b"", "internal server error"
        self.calls.count("ModelInfer", code, started, request)
        return payload, code.value[0], _percent_encoded(message)

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


class InferenceServicer:
    """The RPCs over one DataPlane; blocking work runs on `pool`."""

    def __init__(self, plane: DataPlane, pool: ThreadPoolExecutor):
        self.plane = plane
        self.pool = pool
        self.calls = CallLog(plane)

    async def _call(self, method: str, context, request, work, *args):
        """Run `work(*args)` on the pool for `request`; a ServiceError becomes the matching status, anything else
        INTERNAL."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)
        except ServiceError as exc:
            code = STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
            await context.abort(code, exc.message)
        except Exception:  # a bug: logged with its traceback, answered as INTERNAL
            log.exception("unhandled error in gRPC %s", method)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, "internal server error")
        finally:
            self._count(method, code, started, request)

    def _count(self, method: str, code: grpc.StatusCode, started: float, request=None) -> None:
        self.calls.count(method, code, started, request)

    def _authorize(self, context) -> None:
        token = self.plane.settings.repository_token
        if not token:
            raise ServiceError("the model repository extension is disabled: the operator has not set "
                               "NNSERVE_REPOSITORY_TOKEN", 403)
        given = dict(context.invocation_metadata()).get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ServiceError("the repository RPCs need the metadata 'authorization: Bearer <token>' with the "
                               "operator's token", 401)

    # -- health and metadata -------------------------------------------------------------------------------
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.plane.ready())

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="nnserve", version=__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request, context):
        def ready() -> bool:
            try:
                self.plane.model_ready(request.name, request.version or None)
            except (ModelNotFound, ModelNotReady):
                return False
            return True
        return service_pb2.ModelReadyResponse(ready=await self._call("ModelReady", context, request, ready))

    async def ModelMetadata(self, request, context):
        def metadata():
            doc = self.plane.model_metadata(request.name, request.version or None)
            return service_pb2.ModelMetadataResponse(
                name=doc["name"], versions=doc["versions"], platform=doc["platform"],
                inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in doc["inputs"]],
                outputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in doc["outputs"]])
        return await self._call("ModelMetadata", context, request, metadata)

    async def ModelConfig(self, request, context):
        def config():
            doc = self.plane.model_config(request.name, request.version or None)
            return service_pb2.ModelConfigResponse(
                config=json_format.ParseDict(doc, model_config_pb2.ModelConfig(), ignore_unknown_fields=True))
        return await self._call("ModelConfig", context, request, config)

    async def ModelStatistics(self, request, context):
        def statistics():
            doc = self.plane.model_statistics(request.name or None, request.version or None)
            return json_format.ParseDict(doc, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)
        return await self._call("ModelStatistics", context, request, statistics)

    # -- inference -----------------------------------------------------------------------------------------
    def _infer(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        answer, _ = self.plane.infer(request.model_name, request.model_version or None,
                                     lambda max_elements: decode_grpc_request(request, max_elements),
                                     encode_grpc_response)
        return answer

    async def ModelInfer(self, request, context):
        return await self._call("ModelInfer", context, request, self._infer, request)

    async def ModelStreamInfer(self, request_iterator, context):
        """One response per request, in order; an error is a response with error_message, as in Triton."""
        loop = asyncio.get_running_loop()
        async for request in request_iterator:
            started = time.perf_counter()
            if isinstance(request, Malformed):
                self._count("ModelStreamInfer", grpc.StatusCode.INVALID_ARGUMENT, started)
                yield service_pb2.ModelStreamInferResponse(error_message=request.reason)
                continue
            try:
                response = await loop.run_in_executor(self.pool, self._infer, request)
                code = grpc.StatusCode.OK
                yield service_pb2.ModelStreamInferResponse(infer_response=response)
            except ServiceError as exc:
                code = STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
                yield service_pb2.ModelStreamInferResponse(error_message=exc.message)
            except Exception:  # a bug: logged, answered on the stream
                log.exception("unhandled error in gRPC ModelStreamInfer")
                code = grpc.StatusCode.INTERNAL
                yield service_pb2.ModelStreamInferResponse(error_message="internal server error")
            self._count("ModelStreamInfer", code, started, request)

    # -- repository ----------------------------------------------------------------------------------------
    async def RepositoryIndex(self, request, context):
        def index():
            self._authorize(context)
            return service_pb2.RepositoryIndexResponse(models=[
                service_pb2.RepositoryIndexResponse.ModelIndex(**entry)
                for entry in self.plane.repository_index(request.ready)])
        return await self._call("RepositoryIndex", context, request, index)

    async def RepositoryModelLoad(self, request, context):
        def load():
            self._authorize(context)
            if "config" in request.parameters or any(k.startswith("file:") for k in request.parameters):
                raise BadRequest("loading a model from a config or files in the request is not supported; "
                                 "publish the version into the repository, then call load")
            self.plane.load_model(request.model_name)
            return service_pb2.RepositoryModelLoadResponse()
        return await self._call("RepositoryModelLoad", context, request, load)

    async def RepositoryModelUnload(self, request, context):
        def unload():
            self._authorize(context)
            self.plane.unload_model(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()
        return await self._call("RepositoryModelUnload", context, request, unload)


def _unimplemented(name: str):
    async def method(self, request, context):
        self._count(name, grpc.StatusCode.UNIMPLEMENTED, time.perf_counter())
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by nnserve: it has no "
                            "shared-memory, trace or log settings extension")
    method.__name__ = name
    return method


for _name in UNIMPLEMENTED:
    setattr(InferenceServicer, _name, _unimplemented(_name))


class GrpcServer:
    """A grpc.aio server on its own thread and event loop, in this process (one per worker process).

    When the worker exits (after its HTTP requests drained on SIGTERM) the server stops taking calls and finishes
    the ones in flight, for up to `grace` seconds: granian's workers exit through multiprocessing, which runs its
    finalizers but not atexit; gunicorn's through sys.exit, which runs atexit."""

    def __init__(self, plane: DataPlane, address: str, threads: int, grace: float = 30):
        self.plane, self.address, self.threads, self.grace = plane, address, threads, grace
        self.loop = asyncio.new_event_loop()
        self.server: grpc.aio.Server | None = None
        self.bound = threading.Event()
        self.error: BaseException | None = None
        self._stopped = threading.Lock()

    def start(self) -> "GrpcServer":
        threading.Thread(target=self._run, name="grpc-server", daemon=True).start()
        self.bound.wait(30)
        if self.error is not None:
            raise RuntimeError(f"gRPC cannot listen on {self.address}: {self.error}")
        multiprocessing.util.Finalize(self, self.stop, exitpriority=10)
        atexit.register(self.stop)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._serve())
        self.loop.run_forever()  # not until _serve returns: stop() still needs the loop after termination

    async def _serve(self) -> None:
        try:
            limit = self.plane.settings.max_body_bytes
            options = [("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", limit),
                       ("grpc.max_send_message_length", -1)]
            self.server = grpc.aio.server(options=options)
            servicer = InferenceServicer(self.plane, ThreadPoolExecutor(self.threads, thread_name_prefix="grpc"))
            self.server.add_generic_rpc_handlers((handlers(servicer),))
            if not self.server.add_insecure_port(self.address):
                raise OSError(f"cannot bind {self.address}")
            await self.server.start()
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self.error = exc
        self.bound.set()
        if self.error is None:
            log.info("gRPC listening on %s", self.address)

    def stop(self) -> None:
        """Stop taking calls and let the ones in flight finish, for up to `grace` seconds (once)."""
        if not self._stopped.acquire(blocking=False) or self.server is None or not self.loop.is_running():
            return
        log.info("gRPC on %s: draining the calls in flight", self.address)
        async def stop():
            await self.server.stop(self.grace)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(self.grace + 5)
