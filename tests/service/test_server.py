"""The real server on 127.0.0.1, spoken to by tritonclient and by plain HTTP."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.conftest import start_server
from training.tasks import ServedModel
from training.prepare import prepare
from training.runs import config_of, load_trained


@pytest.fixture(scope="module")
def test_samples(trained_run):
    """64 samples of the run's own test split, and the torch model's probabilities for them."""
    resolved, _, network = load_trained(trained_run)
    X = prepare(config_of(resolved)).X["test"][:64]
    with torch.no_grad():
        probs = ServedModel(network, "multiclass").eval()(torch.from_numpy(X)).numpy()
    return X, probs


def sample_value(metrics_text: str, name: str, **labels) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def infer(client, X, binary: bool, version: str = ""):
    inp = httpclient.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    return client.infer("digits-mlp", [inp], model_version=version, outputs=[out])


def test_tritonclient_reads_metadata(server):
    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "nnserve" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("digits-mlp")
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert json.loads(model["parameters"]["labels"]) == [str(d) for d in range(10)]
    assert client.is_model_ready("digits-mlp", "1") and client.is_model_ready("digits-mlp", "2")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infers_the_torch_classes(server, test_samples, binary):
    X, torch_probs = test_samples
    result = infer(httpclient.InferenceServerClient(server.url), X, binary)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (64, 10)
    np.testing.assert_array_equal(probs.argmax(1), torch_probs.argmax(1))
    np.testing.assert_allclose(probs, torch_probs, atol=1e-5)
    assert result.get_response()["model_version"] == "2"  # the latest by default


def test_every_version_is_served(server, test_samples):
    X, _ = test_samples
    client = httpclient.InferenceServerClient(server.url)
    for version in ("1", "2"):
        assert infer(client, X[:3], False, version).get_response()["model_version"] == version
    assert client.get_model_metadata("digits-mlp", "1")["parameters"]["version"] == "1"


def test_nested_and_flat_data_give_the_same_answer(server, test_samples):
    X, _ = test_samples
    bodies = [{"id": "r1", "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": data}]}
              for data in (X[:2].tolist(), X[:2].reshape(-1).tolist())]
    answers = [server.json("POST", "/v2/models/digits-mlp/infer", body) for body in bodies]
    assert answers[0] == answers[1]
    status, body = answers[0]
    assert status == 200 and body["id"] == "r1" and body["outputs"][0]["shape"] == [2, 10]
    assert len(body["outputs"][0]["data"]) == 20


def _request(shape, data, datatype="FP32", name="input"):
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


BAD_REQUESTS = [
    ("wrong shape", "/v2/models/digits-mlp/infer", _request([2, 65], [0.0] * 130), 400,
     ["input 'input'", "expected shape [-1, 64], got [2, 65]"]),
    ("wrong datatype", "/v2/models/digits-mlp/infer", _request([1, 64], [0] * 64, "INT64"), 400,
     ["input 'input'", "expected datatype FP32, got INT64"]),
    ("element count", "/v2/models/digits-mlp/infer", _request([2, 64], [0.0] * 64), 400,
     ["input 'input'", "needs 128 elements, got 64"]),
    ("unknown datatype", "/v2/models/digits-mlp/infer", _request([1, 64], [0.0] * 64, "FLOAT"), 400,
     ["datatype", "'FLOAT'"]),
    ("strings for numbers", "/v2/models/digits-mlp/infer", _request([1, 2], ["1", "2"]), 400,
     ["input 'input'", "expected FP32 values, got strings"]),
    ("NaN", "/v2/models/digits-mlp/infer", _request([1, 64], [float("nan")] + [0.0] * 63), 400,
     ["input 'input'", "must be finite", "flat index 0"]),
    ("unknown input name", "/v2/models/digits-mlp/infer", _request([1, 64], [0.0] * 64, name="pixels"), 400,
     ["unexpected input 'pixels'", "missing input 'input'"]),
    ("no inputs", "/v2/models/digits-mlp/infer", {"inputs": []}, 400, ["inputs: expected a non-empty list"]),
    ("batch too large", "/v2/models/digits-mlp/infer", _request([300, 64], [0.0] * 300 * 64), 400,
     ["input 'input'", "batch size 300 exceeds the maximum of 256"]),
    ("unknown output", "/v2/models/digits-mlp/infer",
     {**_request([1, 64], [0.0] * 64), "outputs": [{"name": "logits"}]}, 400, ["unknown output 'logits'"]),
    ("unknown model", "/v2/models/nope/infer", _request([1, 64], [0.0] * 64), 404, ["Request for unknown model: 'nope' is not found"]),
    ("unknown version", "/v2/models/digits-mlp/versions/9/infer", _request([1, 64], [0.0] * 64), 404,
     ["Request for unknown model: 'digits-mlp' version 9 is not found", "available versions: ['1', '2']"]),
    ("non-integer version", "/v2/models/digits-mlp/versions/latest/infer", _request([1, 64], [0.0] * 64), 400,
     ["version must be a positive integer", "'latest'"]),
]


@pytest.mark.parametrize("path, body, status, fragments", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_clear_json_error(server, path, body, status, fragments):
    got_status, answer = server.json("POST", path, body)
    assert got_status == status
    for fragment in fragments:
        assert fragment in answer["error"]


def test_all_input_problems_are_reported_together(server):
    body = {"inputs": [{"name": "input", "shape": [1, 63], "datatype": "INT64", "data": [0] * 63},
                       {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    status, answer = server.json("POST", "/v2/models/digits-mlp/infer", body)
    assert status == 400
    assert "expected datatype FP32, got INT64" in answer["error"]
    assert "expected shape [-1, 64], got [1, 63]" in answer["error"]
    assert "unexpected input 'extra'" in answer["error"]


@pytest.mark.parametrize("raw, fragment", [(b'{"inputs": [', "not valid JSON"), (b"[1, 2]", "expected a JSON object"),
                                           (b"\xff\xfe", "not valid JSON")])
def test_invalid_json_is_400(server, raw, fragment):
    status, answer = server.json("POST", "/v2/models/digits-mlp/infer", raw=raw)
    assert status == 400 and fragment in answer["error"]


def test_oversized_body_is_413(server):
    # The client sends the whole body before it reads the answer: the server must read (and drop) it, or the
    # client gets a connection reset instead of the 413.
    for _ in range(5):
        status, answer = server.json("POST", "/v2/models/digits-mlp/infer", raw=b" " * (2 * 1024 * 1024))
        assert status == 413 and "larger than the limit of 1048576 bytes" in answer["error"]


def test_oversized_content_length_is_413_before_the_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/digits-mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1073741824\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than the limit of 1048576 bytes" in answer


@pytest.mark.parametrize("method, path, status, fragment", [
    ("GET", "/no/such/path", 404, "no such endpoint: GET /no/such/path"),
    ("GET", "/v2/models/digits-mlp/infer", 405, "method GET is not allowed"),
    ("GET", "/v2/models/nope", 404, "Request for unknown model: 'nope' is not found"),
    ("GET", "/v2/models/nope/ready", 404, "Request for unknown model: 'nope' is not found"),
    ("GET", "/v2/models/digits-mlp/versions/3", 404, "'digits-mlp' version 3 is not found"),
])
def test_http_errors_are_json(server, method, path, status, fragment):
    got, headers, body = server.request(method, path)
    assert got == status and headers["Content-Type"] == "application/json"
    assert fragment in json.loads(body)["error"]


def test_binary_header_longer_than_body_is_400(server):
    status, _, body = server.request("POST", "/v2/models/digits-mlp/infer", b"{}",
                                     {"Inference-Header-Content-Length": "100"})
    assert status == 400 and "Inference-Header-Content-Length is 100 but the body has 2 bytes" in json.loads(body)["error"]


def test_metrics_move_after_requests(server, test_samples):
    X, _ = test_samples
    before = server.metrics()
    client = httpclient.InferenceServerClient(server.url)
    for _ in range(3):
        infer(client, X[:4], False, "1")
    with pytest.raises(InferenceServerException):
        client.infer("digits-mlp", [httpclient.InferInput("input", [1, 3], "FP32").set_data_from_numpy(
            np.zeros((1, 3), np.float32), binary_data=False)], model_version="1")
    after = server.metrics()

    def delta(name, **labels):
        return sample_value(after, name, **labels) - sample_value(before, name, **labels)

    assert delta("nnserve_inference_requests_total", model="digits-mlp", version="1", outcome="success") == 3
    assert delta("nnserve_inference_requests_total", model="digits-mlp", version="1", outcome="client_error") == 1
    assert delta("nnserve_inference_request_duration_seconds_count", model="digits-mlp", version="1") == 4
    assert delta("nnserve_http_requests_total", route="/v2/models/<name>/versions/<version>/infer",
                 method="POST", status="400") == 1
    for version in ("1", "2"):
        assert sample_value(after, "nnserve_model_loaded", model="digits-mlp", version=version,
                            provider="CPUExecutionProvider") == 1


def test_metrics_add_up_across_two_workers(exported_repo, tmp_path, test_samples):
    X, _ = test_samples
    srv = start_server(exported_repo, tmp_path, "--workers", "2", "--threads", "2")
    try:
        body = json.dumps(_request([1, 64], X[0].tolist())).encode()
        for _ in range(40):  # new connection each time, so both workers take some
            assert srv.request("POST", "/v2/models/digits-mlp/infer", body)[0] == 200
        text = srv.metrics()
        assert sample_value(text, "nnserve_inference_requests_total", model="digits-mlp", outcome="success") == 40
        assert sample_value(text, "nnserve_model_loaded", model="digits-mlp", version="2") == 1
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("kind", ["granian", "gunicorn"])
def test_chunked_bodies_are_read_and_limited(tmp_path, exported_repo, kind):
    """A chunked request (no Content-Length) is answered like any other; over the limit it is a 413."""
    import http.client

    srv = start_server(exported_repo, tmp_path, "--workers", "1", "--server", kind, "--max-body-bytes", "100000")
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]})
    try:
        for chunks, status, fragment in (([body[:100].encode(), body[100:].encode()], 200, b'"model_name"'),
                                         ([b" " * 65536] * 3, 413, b"larger than the limit of 100000 bytes")):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            conn.request("POST", "/v2/models/digits-mlp/infer", body=iter(chunks), encode_chunked=True,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            conn.close()
            assert response.status == status and fragment in answer, answer[:300]
    finally:
        srv.stop()
