"""The gRPC endpoint against tritonclient.grpc (sync, async, aio and a stream), on the real server with two
workers: every zoo model and every model made elsewhere answers as ONNX Runtime does in process, errors carry
the matching status code, and the repository RPCs need the token. Hostile messages are in the hostile-input
catalogue (test_hostile_catalogue.py), beside the HTTP ones."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from service import artifact
from tests.conftest import ROOT, SHIPPED_MODELS, answers_while, free_port, start_server, stateless_models
from tests.service import foreign_models as fm
from tests.service.test_protocol_features import random_inputs
from tests.service.test_server import sample_value

TOKEN = "grpc-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ZOO = stateless_models(SHIPPED_MODELS)  # the stateful streams: tests/service/test_sequences.py
CORPUS = fm.build_corpus()


FRONTENDS = ["nginx", "python"]  # nginx in front of the workers, or grpcio alone (docs/grpc.md)


@pytest.fixture(scope="module", params=FRONTENDS)
def grpc_server(tmp_path_factory, request):
    repo = tmp_path_factory.mktemp("grpc-repo")
    for name in ZOO:
        shutil.copytree(SHIPPED_MODELS / name, repo / name)
    for model in CORPUS:
        fm.write_model(repo, model)
    port = free_port()
    srv = start_server(repo, tmp_path_factory.mktemp("logs"), "--workers", "2", "--grpc-port", str(port),
                       "--grpc-frontend", request.param, "--poll-seconds", "0.3",
                       env={"NNSERVE_REPOSITORY_TOKEN": TOKEN})
    srv.grpc_url, srv.repo = f"127.0.0.1:{port}", repo
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(grpc_server):
    return grpcclient.InferenceServerClient(grpc_server.grpc_url)


def _zoo_feed(name: str) -> dict[str, np.ndarray]:
    return random_inputs(artifact.read_metadata(SHIPPED_MODELS / name / "1"), 3, 11, np.random.default_rng(1))


def _inputs(feed: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, value in feed.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def _expected(onnx_path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def _same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values; BYTES come back as bytes, and per-sample scalars in the config's [batch, 1]."""
    if want.dtype.kind == "O":
        got = np.vectorize(lambda x: x.decode(), otypes=[object])(got)
    assert got.size == want.size and got.dtype == want.dtype
    np.testing.assert_array_equal(got.reshape(want.shape), want)


CASES = [(name, SHIPPED_MODELS / name / "1" / "model.onnx", None) for name in ZOO] + [
    (m.name, None, m) for m in CORPUS]


@pytest.mark.parametrize("name, path, foreign", CASES, ids=[c[0] for c in CASES])
def test_every_model_answers_over_grpc_as_onnx_runtime_does(grpc_server, client, name, path, foreign):
    feed = _zoo_feed(name) if foreign is None else foreign.inputs
    want = fm.expected_outputs(foreign) if foreign is not None else _expected(path, feed)
    result = client.infer(name, _inputs(feed))
    for output, values in want.items():
        _same(result.as_numpy(output), values)


def test_the_async_and_aio_clients_and_a_stream_get_the_same_answers(grpc_server, client):
    model = next(m for m in CORPUS if m.name == "string-in-out")
    want = fm.expected_outputs(model)
    done: queue.Queue = queue.Queue()
    client.async_infer(model.name, _inputs(model.inputs), callback=lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=30)
    assert error is None
    for output, values in want.items():
        _same(result.as_numpy(output), values)

    async def aio():
        async with aioclient.InferenceServerClient(grpc_server.grpc_url) as aio_client:
            inputs = []
            for name, value in model.inputs.items():
                tensor = aioclient.InferInput(name, list(value.shape), "BYTES")
                tensor.set_data_from_numpy(value)
                inputs.append(tensor)
            return await aio_client.infer(model.name, inputs)

    result = asyncio.run(aio())
    for output, values in want.items():
        _same(result.as_numpy(output), values)

    answers: queue.Queue = queue.Queue()
    stream = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    stream.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        stream.async_stream_infer(model.name, _inputs(model.inputs), request_id="first")
        stream.async_stream_infer("nope", _inputs(model.inputs), request_id="second")  # an error, on the stream
        stream.async_stream_infer(model.name, _inputs(model.inputs), request_id="third")
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        stream.stop_stream()
    assert got[0][1] is None and got[0][0].get_response().id == "first"
    assert got[1][0] is None and "Request for unknown model: 'nope' is not found" in str(got[1][1])
    assert got[2][1] is None and got[2][0].get_response().id == "third"
    _same(got[2][0].as_numpy("lower"), want["lower"])


def test_model_config_statistics_metadata_and_metrics_over_grpc(grpc_server, client):
    config = client.get_model_config("multi-io").config
    assert config.max_batch_size == 4 and [t.name for t in config.input] == ["x", "n"]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert client.get_model_metadata("diabetes-mlp").outputs[0].shape == [-1, 1]
    before = client.get_inference_statistics("bool-uint").model_stats[0].inference_stats.success.count
    model = next(m for m in CORPUS if m.name == "bool-uint")
    for _ in range(4):
        client.infer(model.name, _inputs(model.inputs))
    stats = client.get_inference_statistics("bool-uint").model_stats[0]
    assert stats.inference_stats.success.count - before == 4
    metrics = grpc_server.metrics()  # over HTTP: one registry for both protocols
    assert sample_value(metrics, "nnserve_grpc_requests_total", method="ModelInfer", code="OK") >= 4
    assert sample_value(metrics, "nnserve_inference_requests_total", model="bool-uint", outcome="success") >= 4
    assert client.is_model_ready("digits-mlp") and not client.is_model_ready("nope")
    assert client.is_server_live() and client.is_server_ready()


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_each_error_class_has_its_status_code(grpc_server, client):
    good = _inputs({"input": np.zeros((1, 64), np.float32)})
    wrong = _inputs({"input": np.zeros((1, 65), np.float32)})
    cases = [
        (lambda: client.infer("nope", good), "StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found"),
        (lambda: client.infer("digits-mlp", good, model_version="7"), "StatusCode.NOT_FOUND",
         "Request for unknown model: 'digits-mlp' version 7 is not found"),
        (lambda: client.infer("digits-mlp", wrong), "StatusCode.INVALID_ARGUMENT",
         "input 'input': expected shape [-1, 64], got [1, 65]"),
        (lambda: client.infer("digits-mlp", _inputs({"input": np.zeros((300, 64), np.float32)})),
         "StatusCode.INVALID_ARGUMENT", "batch size 300 exceeds the maximum of 256"),
        (lambda: client.infer("digits-mlp", good, model_version="x"), "StatusCode.INVALID_ARGUMENT",
         "model version must be a positive integer"),
        (lambda: client.get_model_repository_index(), "StatusCode.UNAUTHENTICATED", "authorization: Bearer"),
        (lambda: client.get_model_repository_index(headers={"authorization": "Bearer wrong"}),
         "StatusCode.UNAUTHENTICATED", "the operator's token"),
        (lambda: client.load_model("digits-mlp"), "StatusCode.UNAUTHENTICATED", "authorization: Bearer"),
        (lambda: client.unload_model("digits-mlp", headers={"authorization": "Basic x"}),
         "StatusCode.UNAUTHENTICATED", "authorization: Bearer"),
        (lambda: client.get_cuda_shared_memory_status(), "StatusCode.UNIMPLEMENTED",
         "CudaSharedMemoryStatus is not implemented by nnserve"),
        (lambda: client.get_log_settings(), "StatusCode.UNIMPLEMENTED", "LogSettings is not implemented"),
    ]
    for call, code, fragment in cases:
        status, message = _status(call)
        assert status == code and fragment in message, (code, status, message)
    index = client.get_model_repository_index(headers=AUTH)
    assert {m.name for m in index.models} >= set(ZOO)


def test_unload_makes_a_model_unavailable_and_load_brings_it_back(client):
    client.unload_model("sunspots-rnn", headers=AUTH)
    feed = _inputs(_zoo_feed("sunspots-rnn"))
    status, message = _status(lambda: client.infer("sunspots-rnn", feed))
    assert status == "StatusCode.UNAVAILABLE" and "it was unloaded" in message
    client.load_model("sunspots-rnn", headers=AUTH)
    assert client.infer("sunspots-rnn", feed).as_numpy("forecast").shape == (3, 3)


def _stub(url: str):
    channel = grpc.insecure_channel(url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_typed_contents_are_read_as_raw_ones_are(grpc_server):
    channel, stub = _stub(grpc_server.grpc_url)
    with channel:
        request = service_pb2.ModelInferRequest(model_name="multi-io")
        x = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        x.contents.fp32_contents.extend([1.5, -2.0, 3.0])
        n = request.inputs.add(name="n", datatype="INT64", shape=[1, 3])
        n.contents.int64_contents.extend([1, -2, 3])
        response = stub.ModelInfer(request)
    outputs = {o.name: i for i, o in enumerate(response.outputs)}
    total = np.frombuffer(response.raw_output_contents[outputs["sum"]], "<f4")
    square = np.frombuffer(response.raw_output_contents[outputs["square"]], "<i8")
    want = fm.expected_outputs(next(m for m in CORPUS if m.name == "multi-io"),
                               {"x": np.array([[1.5, -2.0, 3.0]], np.float32), "n": np.array([[1, -2, 3]])})
    np.testing.assert_array_equal(total, want["sum"].reshape(-1))
    np.testing.assert_array_equal(square, want["square"].reshape(-1))


def _raw_request(model: str, inputs: list[tuple[str, str, list[int]]], raw: list[bytes]):
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw)
    return request


def test_bytes_that_are_not_utf8_get_invalid_argument(grpc_server, client):
    request = _raw_request("string-in-out", [("text", "BYTES", [1, 1]), ("tokens", "BYTES", [1, 2])],
                           [b"\x02\0\0\0\xff\xfe", b"\x01\0\0\0a\x01\0\0\0b"])
    channel, stub = _stub(grpc_server.grpc_url)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'text': element 0 is not valid UTF-8" in caught.value.details(), caught.value.details()
    assert client.is_server_ready()


def test_hot_reload_under_a_grpc_client_loop_fails_no_call(grpc_server):
    model = next(m for m in CORPUS if m.name == "fp16-int8")
    data = (grpc_server.repo / model.name / "1" / "model.onnx").read_bytes()
    loop_client = grpcclient.InferenceServerClient(grpc_server.grpc_url)

    def publish():
        (grpc_server.repo / model.name / "2").mkdir()
        (grpc_server.repo / model.name / "2" / "model.onnx").write_bytes(data)

    failures, versions = answers_while(
        lambda: loop_client.infer(model.name, _inputs(model.inputs)).get_response().model_version, publish)
    assert failures == [] and "1" in versions and versions[-20:] == ["2"] * 20, (failures[:3], versions[-20:])


def _slow_model(folder: Path) -> None:
    """About a tenth of a second a call of batch 4 on this machine: 96 chained 1024x1024 matrix products."""
    from onnx import TensorProto, helper, numpy_helper, save

    weight = numpy_helper.from_array(np.eye(1024, dtype=np.float32), "w")
    nodes, previous = [], "x"
    for i in range(384):  # about 0.1 s a call
        nodes.append(helper.make_node("MatMul", [previous, "w"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1024])], [weight])
    (folder / "1").mkdir(parents=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "1" / "model.onnx")


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("kind", ["granian", "gunicorn"])
def test_sigterm_answers_every_grpc_call_already_started(tmp_path, kind, frontend):
    _slow_model(tmp_path / "repo" / "slow")
    port = free_port()
    srv = start_server(tmp_path / "repo", tmp_path, "--workers", "2", "--server", kind, "--grpc-port", str(port),
                       "--grpc-frontend", frontend)
    x = np.ones((4, 1024), np.float32)

    async def calls():
        async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as aio_client:
            tensor = aioclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            await aio_client.infer("slow", [tensor])  # connected and warm
            started = [asyncio.ensure_future(aio_client.infer("slow", [tensor])) for _ in range(8)]
            await asyncio.sleep(0.05)  # the calls reached the workers
            srv.process.send_signal(15)
            in_flight = sum(not call.done() for call in started)
            return in_flight, await asyncio.gather(*started, return_exceptions=True)

    try:
        in_flight, results = asyncio.run(calls())
    finally:
        began = time.monotonic()
        code = srv.stop()
        stopped = time.monotonic() - began
    assert in_flight >= 4, in_flight  # most were still running when SIGTERM came
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [] and all(r.as_numpy("y").shape == (4, 1024) for r in results), [str(f) for f in failures[:2]]
    assert code == 0 and stopped < 20, stopped  # no worker waited for the 30 s kill


def test_http_and_grpc_requests_are_batched_together_and_logged_alike(tmp_path):
    model = next(m for m in CORPUS if m.name == "multi-io")
    fm.write_model(tmp_path / "repo", model)
    (tmp_path / "repo" / model.name / "config.pbtxt").write_text(
        "max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 2000000 preferred_batch_size: [ 2 ] }\n")
    port = free_port()
    srv = start_server(tmp_path / "repo", tmp_path, "--workers", "1", "--grpc-port", str(port), "--access-log")
    feed = {name: value[:1] for name, value in model.inputs.items()}
    body = json.dumps({"inputs": [{"name": n, "shape": list(v.shape), "datatype": np_to_triton_dtype(v.dtype),
                                   "data": v.reshape(-1).tolist()} for n, v in feed.items()]}).encode()
    try:
        with ThreadPoolExecutor(2) as pool:  # one request each way; the queue delay waits for the pair
            over_http = pool.submit(srv.request, "POST", f"/v2/models/{model.name}/infer", body)
            over_grpc = pool.submit(grpcclient.InferenceServerClient(f"127.0.0.1:{port}").infer, model.name,
                                    _inputs(feed), request_id="grpc-call-1")
            assert over_http.result(30)[0] == 200
            _same(over_grpc.result(30).as_numpy("sum"), fm.expected_outputs(model, feed)["sum"])
        metrics = srv.metrics()
    finally:
        srv.stop()
    assert sample_value(metrics, "nnserve_inference_batch_size_count", model=model.name) == 1  # one run
    assert sample_value(metrics, "nnserve_inference_batch_size_sum", model=model.name) == 2  # of both requests
    lines = [json.loads(line) for line in srv.log.read_text().splitlines() if '"protocol":"grpc"' in line]
    call = next(line for line in lines if line["method"] == "ModelInfer")
    assert call["request_id"] == "grpc-call-1" and call["code"] == "OK" and call["model"] == model.name


def test_a_grpc_port_in_use_stops_the_server_at_once_with_the_reason():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "service", "--port", str(free_port()), "--grpc-port", str(port),
                                 "--models", str(SHIPPED_MODELS)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen for gRPC on 127.0.0.1:{port}: Address already in use" in result.stderr


def _nginx_pid(srv) -> int:
    children = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(srv.process.pid)], capture_output=True,
                              text=True).stdout.split("\n")
    return next(int(line.split()[0]) for line in children if line.strip().endswith("nginx"))


def test_nginx_fronts_grpc_answers_only_its_own_proxied_calls_and_is_restarted(tmp_path):
    port = free_port()
    srv = start_server(SHIPPED_MODELS, tmp_path, "--workers", "1", "--grpc-port", str(port),
                       "--grpc-frontend", "nginx")
    x = grpcclient.InferInput("input", [1, 64], "FP32")
    x.set_data_from_numpy(np.ones((1, 64), np.float32))
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        want = client.infer("digits-mlp", [x]).as_numpy("probabilities")
        assert "nginx (" in srv.log.read_text()  # the server said what fronts gRPC
        # the proxied route is not an endpoint of the HTTP port, with no secret or a wrong one
        message = _raw_request("digits-mlp", [("input", "FP32", [1, 64])], [b"\0" * 256]).SerializeToString()
        framed = b"\0" + len(message).to_bytes(4, "big") + message
        for headers in ({}, {"X-Nnserve-Grpc": "guess"}):
            status, _, body = srv.request("POST", "/inference.GRPCInferenceService/ModelInfer", framed, headers)
            assert status == 404 and b"no such endpoint" in body, (status, body)
        # nginx killed: the master starts another, and calls answer again
        nginx = _nginx_pid(srv)
        subprocess.run(["kill", "-9", str(nginx)], check=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                np.testing.assert_array_equal(client.infer("digits-mlp", [x]).as_numpy("probabilities"), want)
                break
            except InferenceServerException:
                assert time.monotonic() < deadline, "nginx was not restarted"
                time.sleep(0.2)
        assert _nginx_pid(srv) != nginx
        assert "exited with code -9; restarting it" in srv.log.read_text()
    finally:
        code = srv.stop()
    assert code == 0


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_calls_are_answered(grpc_server, client, compression):
    x = grpcclient.InferInput("input", [2, 64], "FP32")
    x.set_data_from_numpy(np.ones((2, 64), np.float32))
    want = client.infer("digits-mlp", [x]).as_numpy("probabilities")
    got = client.infer("digits-mlp", [x], compression_algorithm=compression).as_numpy("probabilities")
    np.testing.assert_array_equal(got, want)
