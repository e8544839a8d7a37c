"""The text generator served end to end: a tiny fortunes-writer trained on built-in text, published, and asked to
continue prompts over plain JSON, tritonclient HTTP (JSON and binary) and gRPC, and the instances endpoint with
the metadata's defaults; the hostile requests (a 1 MB prompt, 100,000 prompts, max_new_tokens 10^9, a negative
temperature) get a 4xx naming the input, and the server stays healthy."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port, start_server
from tests.text_writer import train_tiny_writer
from training.textgen_graph import MAX_NEW_TOKENS

MODEL = "fortunes-writer"


@pytest.fixture(scope="module")
def writer_server(tmp_path_factory):
    from training.textgen_export import publish_writer_run

    tmp = tmp_path_factory.mktemp("writer-serve")
    run, _summary = train_tiny_writer(tmp)
    publish_writer_run(run, MODEL, tmp / "models", log=lambda _m: None)
    grpc_port = free_port()
    srv = start_server(tmp / "models", tmp, "--workers", "1", "--grpc-port", str(grpc_port))
    srv.grpc_port = grpc_port
    yield srv
    srv.stop()


def v2(prompts: list[str], max_new_tokens=40, temperature=0.8, seed=1) -> dict:
    n = len(prompts)
    column = lambda value: value if isinstance(value, list) else [value] * n  # noqa: E731
    return {"inputs": [{"name": "prompt", "shape": [n], "datatype": "BYTES", "data": prompts},
                       {"name": "max_new_tokens", "shape": [n], "datatype": "INT64", "data": column(max_new_tokens)},
                       {"name": "temperature", "shape": [n], "datatype": "FP32", "data": column(temperature)},
                       {"name": "seed", "shape": [n], "datatype": "INT64", "data": column(seed)}]}


def test_a_prompt_is_continued_and_the_same_seed_gives_the_same_text(writer_server):
    answers = []
    for _ in range(2):
        status, body = writer_server.json("POST", f"/v2/models/{MODEL}/infer", v2(["The cat", "A dog"]))
        assert status == 200, body
        assert body["outputs"][0]["name"] == "text" and body["outputs"][0]["datatype"] == "BYTES"
        answers.append(body["outputs"][0]["data"])
    assert answers[0] == answers[1] and all(0 < len(t) <= 40 for t in answers[0])
    status, body = writer_server.json("POST", f"/v2/models/{MODEL}/infer", v2(["The cat", "A dog"], seed=[2, 1]))
    assert body["outputs"][0]["data"][1] == answers[0][1]  # a row's text depends on its own seed only


def test_tritonclient_http_json_binary_and_grpc_write_the_same_text(writer_server):
    prompts = np.array([b"The old man", "La niña ".encode()], dtype=object)
    settings = {"max_new_tokens": np.array([30, 30], dtype=np.int64), "temperature": np.array([0.9, 0.0], np.float32),
                "seed": np.array([7, 7], dtype=np.int64)}
    texts = []
    for module, client in ((httpclient, httpclient.InferenceServerClient(writer_server.url)),
                           (grpcclient, grpcclient.InferenceServerClient(f"127.0.0.1:{writer_server.grpc_port}"))):
        for binary in ((False, True) if module is httpclient else (None,)):
            tensors = []
            for name, datatype, value in (("prompt", "BYTES", prompts), ("max_new_tokens", "INT64", None),
                                          ("temperature", "FP32", None), ("seed", "INT64", None)):
                tensor = module.InferInput(name, [2], datatype)
                data = prompts if value is not None else settings[name]
                if binary is None:
                    tensor.set_data_from_numpy(data)
                else:
                    tensor.set_data_from_numpy(data, binary_data=binary)
                tensors.append(tensor)
            texts.append([t.decode() for t in client.infer(MODEL, tensors).as_numpy("text").reshape(-1)])
    assert texts[0] == texts[1] == texts[2] and all(texts[0])


def test_instances_take_a_bare_prompt_with_the_metadata_defaults(writer_server):
    status, body = writer_server.json("POST", f"/v1/models/{MODEL}:predict", {"instances": ["The cat", "A dog"]})
    assert status == 200, body
    status, again = writer_server.json("POST", f"/v1/models/{MODEL}:predict", {"instances": [
        {"prompt": "The cat", "max_new_tokens": 200, "temperature": 0.8, "seed": 0}]})
    assert status == 200 and again["predictions"][0] == body["predictions"][0] and "text" in again["predictions"][0]
    status, body = writer_server.json("POST", f"/v1/models/{MODEL}:predict", {"instances": [
        {"prompt": "The", "max_new_tokens": 5}]})
    assert status == 200 and len(body["predictions"][0]["text"]) <= 5


@pytest.mark.parametrize("request_body, expected", [
    (v2(["x" * (1 << 20)]), "input 'prompt': element 0 holds 1048576 bytes; the model takes at most 4096 bytes"),
    (v2(["hi"], max_new_tokens=10**9), f"input 'max_new_tokens': values must be at most {MAX_NEW_TOKENS}, got "
                                       "1000000000"),
    (v2(["hi"], temperature=-0.5), "input 'temperature': values must be at least 0.0, got -0.5"),
    (v2(["hi"], seed=-1), "input 'seed': values must be at least 0, got -1"),
    (v2(["hi"] * 100_000, max_new_tokens=1), "batch size 100000 exceeds the maximum of"),
], ids=["1MB-prompt", "max_new_tokens-1e9", "negative-temperature", "negative-seed", "100k-prompts"])
def test_hostile_requests_get_a_4xx_naming_the_input_and_the_server_stays_healthy(writer_server, request_body,
                                                                                   expected):
    status, body = writer_server.json("POST", f"/v2/models/{MODEL}/infer", request_body)
    assert 400 <= status < 500 and expected in body["error"], body
    assert writer_server.json("GET", "/v2/health/ready")[0] == 200
    status, body = writer_server.json("POST", f"/v2/models/{MODEL}/infer", v2(["The cat"], max_new_tokens=5))
    assert status == 200 and len(body["outputs"][0]["data"][0]) <= 5


def test_grpc_refuses_a_negative_temperature_with_invalid_argument(writer_server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{writer_server.grpc_port}")
    tensors = []
    for name, datatype, value in (("prompt", "BYTES", np.array([b"hi"], dtype=object)),
                                  ("max_new_tokens", "INT64", np.array([5], dtype=np.int64)),
                                  ("temperature", "FP32", np.array([-1.0], dtype=np.float32)),
                                  ("seed", "INT64", np.array([0], dtype=np.int64))):
        tensor = grpcclient.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, tensors)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'temperature': values must be at least 0.0, got -1.0" in caught.value.message()


def test_an_instance_with_an_unknown_input_is_refused_naming_it(writer_server):
    status, body = writer_server.json("POST", f"/v1/models/{MODEL}:predict", {"instances": [
        {"prompt": "The", "temprature": 0.5}]})
    assert status == 400 and "unknown input(s) ['temprature']" in body["error"], body
