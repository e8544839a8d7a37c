"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`, as tritonclient.grpc speaks it.

Every RPC calls the same DataPlane as HTTP, so models, validation, limits, batching, metrics and statistics are
one; messages are converted by service/grpc_protocol.py, and errors map from the HTTP status to the gRPC code.
The server is grpc.aio, one per worker process on a shared port (SO_REUSEPORT), in a thread of its own;
inference runs on a thread pool so that a long run does not hold the event loop. With nginx in front
(service/grpc_frontend.py), ModelInfer calls reach the HTTP workers instead (service/grpc_proxied.py).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing.util
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import json_format, message_factory

from service import __version__
from service.auth import authorize
from service.dataplane import EXTENSIONS, DataPlane
from service.errors import ModelNotFound, ModelNotReady
from service.grpc_protocol import CallLog, Malformed, infer_message, parser, run_call
from service.triton import model_config_pb2, service_pb2

log = logging.getLogger(__name__)
SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
UNIMPLEMENTED = ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                 "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
                 "TraceSetting", "LogSettings")


def _checked(servicer: "InferenceServicer", name: str):
    behaviour = getattr(servicer, name)

    async def unary(request, context):
        if isinstance(request, Malformed):
            servicer._count(name, grpc.StatusCode.INVALID_ARGUMENT, time.perf_counter())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await behaviour(request, context)
    return unary


def rpc_handlers(servicer: "InferenceServicer") -> grpc.GenericRpcHandler:
    """The service's method handlers (what service_pb2_grpc registers), with request parsing that answers a
    malformed message with INVALID_ARGUMENT."""
    methods = {}
    for method in SERVICE.methods:
        parse = parser(message_factory.GetMessageClass(method.input_type))
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming:
            methods[method.name] = grpc.stream_stream_rpc_method_handler(
                getattr(servicer, method.name), request_deserializer=parse, response_serializer=serialize)
        else:
            methods[method.name] = grpc.unary_unary_rpc_method_handler(
                _checked(servicer, method.name), request_deserializer=parse, response_serializer=serialize)
    return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)


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
        result, code, message = await asyncio.get_running_loop().run_in_executor(
            self.pool, run_call, method, work, *args)
        self._count(method, code, started, request)
        if code != grpc.StatusCode.OK:
            await context.abort(code, message)
        return result

    def _count(self, method: str, code: grpc.StatusCode, started: float, request=None) -> None:
        self.calls.count(method, code, started, request)

    def _authorize(self, context) -> None:
        authorize(dict(context.invocation_metadata()).get("authorization", ""), self.plane.settings.repository_token,
                  "the repository RPCs need the metadata 'authorization: Bearer <token>' with the operator's token")

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
    async def ModelInfer(self, request, context):
        return await self._call("ModelInfer", context, request, infer_message, self.plane, request)

    async def ModelStreamInfer(self, request_iterator, context):
        """One response per request, in order; an error is a response with error_message, as in Triton."""
        loop = asyncio.get_running_loop()
        async for request in request_iterator:
            started = time.perf_counter()
            if isinstance(request, Malformed):
                self._count("ModelStreamInfer", grpc.StatusCode.INVALID_ARGUMENT, started)
                yield service_pb2.ModelStreamInferResponse(error_message=request.reason)
                continue
            response, code, message = await loop.run_in_executor(
                self.pool, run_call, "ModelStreamInfer", infer_message, self.plane, request)
            if code == grpc.StatusCode.OK:
                yield service_pb2.ModelStreamInferResponse(infer_response=response)
            else:
                yield service_pb2.ModelStreamInferResponse(error_message=message)
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
            self.plane.load_model(request.model_name, request.parameters)
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
            self.server.add_generic_rpc_handlers((rpc_handlers(servicer),))
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
