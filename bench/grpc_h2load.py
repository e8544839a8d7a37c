"""Helpers to load nnserve's gRPC endpoint with h2load (Debian's nghttp2-client), a real HTTP/2 load generator.

A unary gRPC call is an HTTP/2 POST of one length-prefixed protobuf message, so h2load can send one body file:

    .venv-dev/bin/python -m bench.grpc_h2load body digits-mlp /tmp/mlp.grpc
    h2load -D 10 -c 64 -m 1 -d /tmp/mlp.grpc -H 'content-type: application/grpc' -H 'te: trailers' \\
        http://127.0.0.1:8081/inference.GRPCInferenceService/ModelInfer

h2load counts HTTP statuses, and a gRPC error still has HTTP status 200: check nnserve_grpc_requests_total
{code="OK"} after a run. `floor aio|sync PORT` serves ModelInfer with a fixed answer and nothing else, the cost of
Python gRPC itself, to put nnserve's figures beside.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

def body(model: str, x: np.ndarray | None = None) -> bytes:
    """The gRPC message of one ModelInfer call with `x` (default: bench.run's fixed sample) as raw contents."""
    if x is None:
        from bench.run import sample

        x = sample(model)
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, "<f4").tobytes())
    data = request.SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data  # not compressed, then the length, big-endian


def _handler(behaviour) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=service_pb2.ModelInferRequest.FromString,
            response_serializer=service_pb2.ModelInferResponse.SerializeToString)})


def floor(kind: str, port: int) -> None:
    answer = service_pb2.ModelInferResponse(model_name="floor")
    if kind == "sync":
        server = grpc.server(ThreadPoolExecutor(8))
        server.add_generic_rpc_handlers((_handler(lambda request, context: answer),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def reply(request, context):
        return answer

    async def serve() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handler(reply),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_h2load", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("body", help="write the body file of one ModelInfer call")
    make.add_argument("model", help="a model of bench.run's MODELS")
    make.add_argument("out")
    serve = sub.add_parser("floor", help="serve ModelInfer with a fixed answer (Python gRPC's own cost)")
    serve.add_argument("kind", choices=["aio", "sync"])
    serve.add_argument("port", type=int)
    args = parser.parse_args()
    if args.command == "body":
        with open(args.out, "wb") as fh:
            fh.write(body(args.model))
    else:
        floor(args.kind, args.port)


if __name__ == "__main__":
    main()
