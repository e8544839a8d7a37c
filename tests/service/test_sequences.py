"""Stateful sequences on the real server with two workers: Triton's own example model and client programs, and an
accumulator whose total is implicit state, over HTTP (plain and tritonclient) and gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import free_port, start_server, wait_until
from tests.service.sequence_models import TRITON_EXAMPLES, add_accumulator, add_simple_sequence


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("seq-repo")
    add_simple_sequence(repo)
    add_accumulator(repo)
    add_accumulator(repo, "acc-text", string_ids=True)
    add_accumulator(repo, "acc-idle", idle_microseconds=300_000)
    add_accumulator(repo, "acc-reload", latest_only=True)
    grpc_port = free_port()
    srv = start_server(repo, tmp_path_factory.mktemp("seq-logs"), "--workers", "2", "--grpc-port", str(grpc_port),
                       "--max-sequences", "16")
    srv.grpc_port, srv.repo = grpc_port, repo
    yield srv
    srv.stop()


def step(srv, model: str, value: int, sequence_id, start=False, end=False, extra: dict | None = None,
         batch: int = 1) -> tuple[int, dict]:
    """One request of a sequence over plain HTTP (a new connection each time): (status, answer)."""
    parameters = {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end, **(extra or {})}
    parameters = {k: v for k, v in parameters.items() if v is not None}
    body = {"inputs": [{"name": "INPUT", "shape": [batch, 1], "datatype": "INT64", "data": [value] * batch}],
            "parameters": parameters}
    return srv.json("POST", f"/v2/models/{model}/infer", body)


def total(answer: dict) -> int:
    return next(o for o in answer["outputs"] if o["name"] == "OUTPUT")["data"][0]


@pytest.mark.parametrize("program, protocol", [("simple_http_sequence_sync_infer_client.py", "http"),
                                               ("simple_grpc_sequence_sync_infer_client.py", "grpc"),
                                               ("simple_grpc_sequence_stream_infer_client.py", "grpc")])
def test_tritons_own_sequence_clients_pass_unchanged(seq_server, program, protocol):
    port = seq_server.port if protocol == "http" else seq_server.grpc_port
    result = subprocess.run([sys.executable, str(TRITON_EXAMPLES / program), "-u", f"127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: Sequence" in result.stdout
    assert "[1] 11 : -11 : -11" in result.stdout  # the answers were checked, not an empty list


def test_interleaved_sequences_on_two_workers_and_many_connections_get_their_own_totals(seq_server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    rng = np.random.default_rng(7)
    ids = [101, 102, "alpha", "beta", 2**64 - 1, "γ-unicode"]  # the largest id: over plain HTTP (gRPC: int64)
    values = {sid: rng.integers(-50, 50, size=12).tolist() for sid in ids}
    errors, seen = [], {}

    def run(sid, kind: str) -> None:
        model = "acc-text" if isinstance(sid, str) else "acc"  # a model's CORRID control takes one type of id
        try:
            client = (httpclient.InferenceServerClient(seq_server.url) if kind == "http" else
                      grpcclient.InferenceServerClient(f"127.0.0.1:{seq_server.grpc_port}"))
            module = httpclient if kind == "http" else grpcclient
            totals = []
            for i, value in enumerate(values[sid]):
                if kind == "plain":
                    status, answer = step(seq_server, model, value, sid, start=i == 0, end=i == 11)
                    assert status == 200, answer
                    totals.append(total(answer))
                    continue
                x = module.InferInput("INPUT", [1, 1], "INT64")
                x.set_data_from_numpy(np.array([[value]], np.int64))
                result = client.infer(model, [x], sequence_id=sid, sequence_start=i == 0, sequence_end=i == 11)
                totals.append(int(result.as_numpy("OUTPUT")[0, 0]))
            seen[sid] = totals
        except Exception as exc:  # reported by the main thread
            errors.append(f"{sid}: {exc!r}")

    kinds = ["plain", "http", "grpc", "plain", "plain", "grpc"]
    threads = [threading.Thread(target=run, args=(sid, kind)) for sid, kind in zip(ids, kinds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert seen == {sid: np.cumsum(values[sid]).tolist() for sid in ids}


def test_the_server_feeds_the_id_and_the_end_flag_and_end_frees_the_sequence(seq_server):
    assert step(seq_server, "acc", 5, 7001, start=True)[0] == 200
    status, answer = step(seq_server, "acc", 1, 7001, end=True)
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert status == 200 and outputs == {"OUTPUT": [6], "ID": [7001], "LAST": [True]}
    status, answer = step(seq_server, "acc", 1, 7001)
    assert status == 400 and answer["error"] == ("inference request for sequence 7001 to model 'acc' must specify "
                                                 "the START flag on the first request of the sequence")


def test_an_id_of_the_other_type_than_the_corrid_control_is_refused(seq_server):
    status, answer = step(seq_server, "acc", 1, "text-id", start=True)
    assert status == 400 and answer["error"] == ("sequence batching control 'CORRID' data-type is 'BYTES', but the "
                                                 "model expects 'UINT64'")
    status, answer = step(seq_server, "acc-text", 1, "text-id", start=True)
    assert status == 200 and {o["name"]: o["data"] for o in answer["outputs"]}["ID"] == ["text-id"]


def test_start_on_a_live_id_starts_it_again(seq_server):
    step(seq_server, "acc-text", 40, "again", start=True)
    assert total(step(seq_server, "acc-text", 2, "again")[1]) == 42
    assert total(step(seq_server, "acc-text", 3, "again", start=True)[1]) == 3


@pytest.mark.parametrize("parameters, fragment", [
    ({}, "inference request to model 'acc' must specify a non-zero or non-empty correlation ID"),
    ({"sequence_id": 0}, "must specify a non-zero or non-empty correlation ID"),
    ({"sequence_id": -1}, "sequence_id: expected an unsigned 64-bit integer, got -1"),
    ({"sequence_id": 2**64}, "sequence_id: expected an unsigned"),  # JSON reads it as a float
    ({"sequence_id": "x" * 200}, "sequence_id: a string id has at most 128 bytes, got 200"),
    ({"sequence_id": 1.5}, "sequence_id: expected an unsigned integer or a string, got float"),
    ({"sequence_id": 9, "sequence_start": "yes"}, "parameters.sequence_start: expected true or false, got 'yes'"),
    ({"sequence_id": 424242, "sequence_end": True}, "sequence 424242 to model 'acc' must specify the START flag"),
])
def test_hostile_sequence_parameters_get_a_400_naming_the_problem(seq_server, parameters, fragment):
    body = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT64", "data": [1]}], "parameters": parameters}
    status, answer = seq_server.json("POST", "/v2/models/acc/infer", body)
    assert status == 400 and fragment in answer["error"]


def test_a_batch_and_a_control_input_from_the_client_are_refused(seq_server):
    status, answer = step(seq_server, "acc", 1, 55, start=True, batch=2)
    assert status == 400 and answer["error"] == ("inference request to model 'acc' must specify batch-size 1 due "
                                                 "to requirements of sequence batcher")
    body = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT64", "data": [1]},
                       {"name": "START", "shape": [1, 1], "datatype": "INT32", "data": [1]}],
            "parameters": {"sequence_id": 56, "sequence_start": True}}
    status, answer = seq_server.json("POST", "/v2/models/acc/infer", body)
    assert status == 400 and "unexpected input 'START'" in answer["error"]


def test_the_live_sequence_limit_answers_503_and_names_it(seq_server):
    for i in range(16):
        step(seq_server, "acc-idle", 1, 9000 + i, start=True)  # fills the table (--max-sequences 16)
    status, answer = step(seq_server, "acc-idle", 1, 9999, start=True)
    assert status == 503 and "model 'acc-idle' has 16 live sequences, its limit" in answer["error"]
    time.sleep(0.4)  # past max_sequence_idle_microseconds: the idle ones make room
    assert step(seq_server, "acc-idle", 1, 9999, start=True)[0] == 200


def test_an_idle_sequence_expires_and_a_later_request_says_so(seq_server):
    assert step(seq_server, "acc-idle", 1, 4242, start=True)[0] == 200
    time.sleep(0.4)
    status, answer = step(seq_server, "acc-idle", 1, 4242)
    assert status == 400 and answer["error"].endswith(
        "(sequence 4242 expired: idle for more than 300000 µs, the model's max_sequence_idle_microseconds)")
    metrics = seq_server.metrics()
    expired = [line for line in metrics.splitlines() if line.startswith('nnserve_sequences_expired_total{model="acc-idle"')]
    assert expired and float(expired[0].split()[-1]) >= 1


def test_metrics_count_live_started_and_ended_sequences(seq_server):
    def value(name: str) -> float:
        lines = [line for line in seq_server.metrics().splitlines() if line.startswith(f'{name}{{model="acc",')]
        return float(lines[0].split()[-1]) if lines else 0.0

    started, ended, live = value("nnserve_sequences_started_total"), value("nnserve_sequences_ended_total"), \
        value("nnserve_sequences_live")
    step(seq_server, "acc", 1, 8080, start=True)
    assert value("nnserve_sequences_live") == live + 1
    step(seq_server, "acc", 1, 8080, end=True)
    assert value("nnserve_sequences_started_total") == started + 1 and value("nnserve_sequences_ended_total") == ended + 1
    assert value("nnserve_sequences_live") == live


def test_a_sequence_of_a_replaced_version_is_dropped_and_the_client_told(seq_server):
    assert step(seq_server, "acc-reload", 10, 777, start=True)[0] == 200
    assert total(step(seq_server, "acc-reload", 1, 777)[1]) == 11
    add_accumulator(seq_server.repo, "acc-reload", version=2, latest_only=True)
    status, body = seq_server.json("POST", "/v2/repository/models/acc-reload/load", {})
    wait_until(lambda: seq_server.json("GET", "/v2/models/acc-reload")[1].get("versions") == ["2"], 30,
               "version 2 to replace version 1")
    status, answer = step(seq_server, "acc-reload", 1, 777)
    assert status == 400 and answer["error"].endswith(
        "(sequence 777 was dropped: version 1 of model 'acc-reload' was unloaded)")
    assert step(seq_server, "acc-reload", 1, 777, start=True)[0] == 200


def test_grpc_maps_sequence_errors_to_their_status_codes(seq_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{seq_server.grpc_port}")
    x = grpcclient.InferInput("INPUT", [1, 1], "INT64")
    x.set_data_from_numpy(np.array([[1]], np.int64))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("acc", [x], sequence_id=31337)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "START flag" in refused.value.message()
    config = client.get_model_config("acc", as_json=True)["config"]
    assert [c["name"] for c in config["sequence_batching"]["control_input"]] == ["START", "READY", "END", "CORRID"]
    assert [t["name"] for t in config["input"]] == ["INPUT"]


def test_the_convenience_endpoint_points_a_stateful_model_to_infer(seq_server):
    status, answer = seq_server.json("POST", "/v1/models/acc:predict", {"instances": [[1]]})
    assert status == 400 and "send them to /v2/models/acc/infer with parameters sequence_id" in answer["error"]
    assert json.loads(seq_server.request("GET", "/v2")[2])["extensions"][-2:] == ["sequence", "sequence(string_id)"]


def test_sigterm_with_live_sequences_answers_the_requests_in_flight(tmp_path):
    import urllib.error

    repo = tmp_path / "repo"
    add_accumulator(repo)
    srv = start_server(repo, tmp_path, "--workers", "2")
    outcomes, stop = [], threading.Event()

    def client(sid: int) -> None:
        first = True
        while not stop.is_set():
            try:
                status, _ = step(srv, "acc", 1, sid, start=first)
                outcomes.append(status)
                first = False
            except (urllib.error.URLError, ConnectionError, OSError):
                return  # the server has closed its port: nothing was taken up

    threads = [threading.Thread(target=client, args=(600 + i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(outcomes) > 40, 30, "requests of the live sequences")
    assert srv.stop() == 0
    stop.set()
    for t in threads:
        t.join(30)
    assert outcomes and set(outcomes) == {200}, sorted(set(outcomes))


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory):
    from tests.conftest import SHIPPED_MODELS

    srv = start_server(SHIPPED_MODELS, tmp_path_factory.mktemp("stream-logs"), "--workers", "2")
    yield srv
    srv.stop()


def _series(name: str) -> list[float]:
    import importlib

    dataset, column = ("co2", "co2") if name.startswith("co2") else ("sunspots", "SUNACTIVITY")
    frame = importlib.import_module(f"statsmodels.datasets.{dataset}").load_pandas().data
    return frame[column].interpolate().astype("float32").tolist()


@pytest.mark.parametrize("window_model, window", [("co2-lstm", 52), ("sunspots-gru", 24), ("sunspots-rnn", 24)])
@pytest.mark.parametrize("per_request", [1, 3])
def test_a_streamed_series_answers_as_the_window_model_does(stream_server, window_model, window, per_request):
    """Each recurrent zoo model's stream, fed through the server a step (or three) at a time, gives the window
    model's forecast for the same values after every request."""
    values = _series(window_model)[-3 * window:]
    stream = f"{window_model}-stream"
    for i in range(0, len(values), per_request):
        chunk = values[i:i + per_request]
        body = {"inputs": [{"name": "input", "shape": [1, len(chunk)], "datatype": "FP32", "data": chunk}],
                "parameters": {"sequence_id": f"{window_model}-{per_request}", "sequence_start": i == 0}}
        status, answer = stream_server.json("POST", f"/v2/models/{stream}/infer", body)
        assert status == 200, answer
        seen = values[:i + len(chunk)]
        whole = {"inputs": [{"name": "input", "shape": [1, len(seen)], "datatype": "FP32", "data": seen}]}
        status, expected = stream_server.json("POST", f"/v2/models/{window_model}/infer", whole)
        assert status == 200, expected
        got, want = np.array(answer["outputs"][0]["data"]), np.array(expected["outputs"][0]["data"])
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max()))), (i, got, want)
