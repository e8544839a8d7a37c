"""A text model served end to end: a tiny fortunes-language model trained on built-in text, published, and asked
for languages over curl-style JSON, tritonclient HTTP (JSON and binary) and gRPC, the instances endpoint and the
classification extension; hostile strings and batches are refused or answered, and the server stays healthy."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import free_port, start_server
from tests.text_corpus import train_tiny

MODEL = "fortunes-language"
SENTENCES = ["Der hund sieht die katze und das haus.", "The cat sees a big red tree.", "Кот видит большой дом."]


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    from training.textexport import publish_text_run

    tmp = tmp_path_factory.mktemp("text-serve")
    publish_text_run(train_tiny(tmp), MODEL, tmp / "models", log=lambda _m: None)
    grpc_port = free_port()
    srv = start_server(tmp / "models", tmp, "--workers", "1", "--grpc-port", str(grpc_port))
    srv.grpc_port = grpc_port
    yield srv
    srv.stop()


def _languages(probabilities) -> list[str]:
    return [["de", "en", "ru"][i] for i in np.asarray(probabilities).argmax(1)]


def test_json_strings_over_plain_http(text_server):
    status, body = text_server.json("POST", f"/v2/models/{MODEL}/infer", {"inputs": [
        {"name": "text", "shape": [3], "datatype": "BYTES", "data": SENTENCES}]})
    assert status == 200, body
    assert _languages(body["outputs"][0]["data"] and np.reshape(body["outputs"][0]["data"], (3, 3))) == \
        ["de", "en", "ru"]


def test_tritonclient_http_json_and_binary_and_grpc_agree(text_server):
    http = httpclient.InferenceServerClient(text_server.url)
    answers = []
    for binary in (False, True):
        tensor = httpclient.InferInput("text", [3], "BYTES")
        tensor.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=object), binary_data=binary)
        answers.append(http.infer(MODEL, [tensor]).as_numpy("probabilities"))
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{text_server.grpc_port}")
    tensor = grpcclient.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=object))
    answers.append(grpc.infer(MODEL, [tensor]).as_numpy("probabilities"))
    for answer in answers:
        np.testing.assert_allclose(answer, answers[0], atol=1e-6)
    assert _languages(answers[0]) == ["de", "en", "ru"]


def test_instances_endpoint_and_classification_extension_give_labels(text_server):
    status, body = text_server.json("POST", f"/v1/models/{MODEL}:predict", {"instances": SENTENCES})
    assert status == 200, body
    assert json.dumps(body["predictions"]).count('"ru"') >= 1
    status, body = text_server.json("POST", f"/v2/models/{MODEL}/infer", {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCES[2]]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]})
    assert status == 200, body
    assert body["outputs"][0]["datatype"] == "BYTES" and body["outputs"][0]["data"][0].endswith(":ru")


def test_invalid_utf8_is_a_clear_4xx(text_server):
    request = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                      "parameters": {"binary_data_size": 6}}]}).encode()
    element = struct.pack("<I", 2) + b"\xff\xfe"
    status, _, body = text_server.request("POST", f"/v2/models/{MODEL}/infer", request + element, headers={
        "Inference-Header-Content-Length": str(len(request)), "Content-Type": "application/octet-stream"})
    assert 400 <= status < 500, body
    assert b"UTF-8" in body or b"utf-8" in body


def test_a_1mb_string_and_a_100000_element_batch_are_refused_and_the_server_stays_healthy(text_server):
    status, body = text_server.json("POST", f"/v2/models/{MODEL}/infer", {"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Der hund " * 110_000]}]})
    assert status == 400 and "input 'text': element 0 holds 990000 bytes; the model takes at most 4096 bytes" in \
        body["error"], body
    status, body = text_server.json("POST", f"/v2/models/{MODEL}/infer", {"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Der hund " * 455]}]})  # 4095 bytes
    assert status == 200 and np.isclose(sum(body["outputs"][0]["data"]), 1, atol=1e-5), body  # the first 256 characters
    status, body = text_server.json("POST", f"/v2/models/{MODEL}/infer", {"inputs": [
        {"name": "text", "shape": [100_000], "datatype": "BYTES", "data": ["a"] * 100_000}]})
    assert 400 <= status < 500 and "batch" in json.dumps(body), body
    assert text_server.request("GET", "/v2/health/ready")[0] == 200
