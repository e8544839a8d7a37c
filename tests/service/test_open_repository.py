"""Any ONNX model from a Triton-layout repository: models made by other tools (skl2onnx, onnx.helper), with only
model.onnx in their folder, served through tritonclient over JSON and binary, configs auto-completed and validated
as Triton does, the configuration and statistics extensions, and hostile model files refused with a reason."""

from __future__ import annotations

import http.client
import json
import shutil
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from service.app import create_app
from service.settings import Settings
from tests.conftest import SHIPPED_MODELS, answers_while, start_server
from tests.service import foreign_models as fm

CORPUS = fm.build_corpus()
BY_NAME = {m.name: m for m in CORPUS}


def _as_text(array: np.ndarray) -> np.ndarray:
    """BYTES answers: tritonclient gives bytes from binary data and str from JSON; compare as text."""
    if array.dtype.kind in "OSU":
        return np.vectorize(lambda x: x.decode() if isinstance(x, bytes) else str(x), otypes=[object])(array)
    return array


@pytest.fixture(scope="module")
def corpus_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("open-repo")
    for model in CORPUS:
        fm.write_model(repo, model)
    # the same batchable and non-batchable graphs, once more with an empty config.pbtxt
    for name in ("multi-io", "no-batch-dim"):
        folder = repo / f"{name}-empty-config"
        shutil.copytree(repo / name, folder)
        (folder / "config.pbtxt").write_text("")
    return repo


@pytest.fixture(scope="module")
def open_server(corpus_repo, tmp_path_factory):
    """Two worker processes, a shared state folder the test can read, and a fast poll for new versions."""
    state = tmp_path_factory.mktemp("state")
    srv = start_server(corpus_repo, tmp_path_factory.mktemp("logs"), "--workers", "2", "--poll-seconds", "0.3",
                       env={"NNSERVE_STATE_DIR": str(state)})
    srv.state = state
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(open_server):
    return httpclient.InferenceServerClient(open_server.url)


def _infer(client, model: fm.ForeignModel, binary: bool, feed=None):
    feed = feed or model.inputs
    inputs = []
    for name, value in feed.items():
        tensor = httpclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    names = fm.expected_outputs(model).keys()
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    return client.infer(model.name, inputs, outputs=outputs)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", CORPUS, ids=[m.name for m in CORPUS])
def test_a_model_from_elsewhere_answers_as_onnx_runtime_does(client, model, binary):
    """Only model.onnx in the folder; every output equals ONNX Runtime in process, in the config's shape."""
    config = client.get_model_config(model.name)
    result = _infer(client, model, binary)
    for name, want in fm.expected_outputs(model).items():
        got = result.as_numpy(name)
        spec = next(o for o in config["output"] if o["name"] == name)
        dims = ([len(next(iter(model.inputs.values())))] if config["max_batch_size"] else []) + spec["dims"]
        assert len(got.shape) == len(dims) and all(d in (-1, g) for d, g in zip(dims, got.shape)), (got.shape, dims)
        assert got.size == want.size
        np.testing.assert_array_equal(_as_text(got).reshape(want.shape), _as_text(want))


# What Triton's auto-complete gives each graph (onnxruntime_backend AutoCompleteMaxBatch / AutoCompleteIO).
EXPECTED_CONFIGS = {
    "multi-io": {
        "max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 0},
        "input": [("x", "TYPE_FP32", [3], None), ("n", "TYPE_INT64", [3], None)],
        "output": [("sum", "TYPE_FP32", [3], None), ("square", "TYPE_INT64", [3], None),
                   ("positive", "TYPE_BOOL", [3], None)]},
    "no-batch-dim": {
        "max_batch_size": 0, "dynamic_batching": None,
        "input": [("matrix", "TYPE_FP32", [3, 4], None)], "output": [("transposed", "TYPE_FP32", [4, 3], None)]},
    "string-in-out": {
        "max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 0},
        "input": [("text", "TYPE_STRING", [1], []), ("tokens", "TYPE_STRING", [2], None)],
        "output": [("lower", "TYPE_STRING", [1], []), ("tokens_twice", "TYPE_STRING", [4], None)]},
    "scalar-io": {
        "max_batch_size": 0, "dynamic_batching": None,
        "input": [("values", "TYPE_FP32", [-1], None), ("scale", "TYPE_FP32", [1], None)],
        "output": [("total", "TYPE_FP32", [1], None), ("scaled", "TYPE_FP32", [-1], None)]},
}
EXPECTED_CONFIGS["multi-io-empty-config"] = EXPECTED_CONFIGS["multi-io"]
EXPECTED_CONFIGS["no-batch-dim-empty-config"] = EXPECTED_CONFIGS["no-batch-dim"]


def _tensors(entries: list[dict]) -> list[tuple]:
    return [(t["name"], t["data_type"], t["dims"], t["reshape"]["shape"] if "reshape" in t else None)
            for t in entries]


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIGS))
def test_get_model_config_gives_what_tritons_auto_complete_gives(client, name):
    want = EXPECTED_CONFIGS[name]
    config = client.get_model_config(name)
    assert config["name"] == name and config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == want["max_batch_size"]
    assert sorted(_tensors(config["input"])) == sorted(want["input"])
    assert sorted(_tensors(config["output"])) == sorted(want["output"])
    batching = config.get("dynamic_batching")
    if want["dynamic_batching"] is None:
        assert batching is None
    else:
        assert {k: batching[k] for k in want["dynamic_batching"]} == want["dynamic_batching"]
    assert config["default_model_filename"] == "model.onnx"
    meta = client.get_model_metadata(name)  # metadata shapes are [-1] + dims when the model batches
    assert [t["shape"] for t in meta["inputs"]] == [([-1] if want["max_batch_size"] else []) + t["dims"]
                                                    for t in config["input"]]


def test_server_metadata_advertises_the_extensions_and_unknown_models_get_tritons_words(client):
    extensions = client.get_server_metadata()["extensions"]
    assert {"model_configuration", "statistics", "model_repository", "binary_tensor_data"} <= set(extensions)
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope' is not found"):
        client.get_model_config("nope")


def _worker_counts(state: Path, name: str) -> dict[str, int]:
    """Successful requests of version 1 of `name`, by worker pid, from the workers' statistics files."""
    return {path.parts[-3]: int(np.frombuffer(path.read_bytes(), dtype=np.float64)[0])
            for path in state.glob(f"stats/*/{name}/1")}


def test_statistics_are_the_whole_servers_summed_over_both_workers(open_server, client):
    model = BY_NAME["skl-diabetes-forest"]
    body = json.dumps({"inputs": [{"name": "X", "shape": list(model.inputs["X"].shape), "datatype": "FP32",
                                   "data": model.inputs["X"].reshape(-1).tolist()}]}).encode()
    before = _worker_counts(open_server.state, model.name)  # other tests may have asked this model already
    start = client.get_inference_statistics(model.name)["model_stats"][0]

    def send(_):
        conn = http.client.HTTPConnection("127.0.0.1", open_server.port, timeout=30)  # a new connection each
        conn.request("POST", f"/v2/models/{model.name}/infer", body)
        status = conn.getresponse().status
        conn.close()
        return status

    def served() -> dict[str, int]:
        counts = _worker_counts(open_server.state, model.name)
        return {pid: n - before.get(pid, 0) for pid, n in counts.items() if n > before.get(pid, 0)}

    sent = 0
    with ThreadPoolExecutor(8) as pool:  # concurrent clients, so that both workers take some
        while sent < 400 and (sent < 32 or len(served()) < 2):
            assert set(pool.map(send, range(16))) == {200}
            sent += 16
    assert len(served()) == 2 and sum(served().values()) == sent, served()  # both workers answered some
    bad = json.dumps({"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).encode()
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", open_server.port, timeout=30)
        conn.request("POST", f"/v2/models/{model.name}/infer", bad)
        assert conn.getresponse().status == 400
        conn.close()
    rows = len(model.inputs["X"])
    for _ in range(6):  # whichever worker answers, it reports the server's total
        stats = client.get_inference_statistics(model.name)["model_stats"]
        assert len(stats) == 1 and stats[0]["version"] == "1"
        inference, was = stats[0]["inference_stats"], start["inference_stats"]
        assert inference["success"]["count"] - was["success"]["count"] == sent
        assert inference["fail"]["count"] - was["fail"]["count"] == 3 and inference["fail"]["ns"] > was["fail"]["ns"]
        assert inference["queue"]["count"] == inference["compute_infer"]["count"] == inference["success"]["count"]
        phases = sum(inference[p]["ns"] for p in ("compute_input", "queue", "compute_infer", "compute_output"))
        assert 0 < phases <= inference["success"]["ns"] + 1000  # the phases are parts of each request's time
        assert stats[0]["execution_count"] - start["execution_count"] == sent
        assert stats[0]["inference_count"] - start["inference_count"] == sent * rows
        assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
        assert stats[0]["last_inference"] >= start["last_inference"] and stats[0]["last_inference"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {m.name for m in CORPUS}


def test_a_model_copied_into_a_new_version_folder_is_served_with_no_failed_request(open_server, corpus_repo):
    model = BY_NAME["multi-io"]
    data = (corpus_repo / model.name / "1" / "model.onnx").read_bytes()
    client = httpclient.InferenceServerClient(open_server.url)

    def publish():
        folder = corpus_repo / model.name / "2"
        folder.mkdir()  # an empty version folder, then the file written in two halves, as a slow copy does
        time.sleep(0.8)
        with open(folder / "model.onnx", "wb") as fh:
            fh.write(data[:len(data) // 2])
            fh.flush()
            time.sleep(0.8)
            fh.write(data[len(data) // 2:])

    failures, answered = answers_while(lambda: _infer(client, model, True).get_response()["model_version"], publish)
    assert failures == [] and "1" in answered and answered[-20:] == ["2"] * 20, (failures[:3], answered[-20:])


# -- in process: config mismatches, hostile files, warm-up, version policies -----------------------------------
def _app(repo: Path, **settings):
    app = create_app(Settings(models=repo, background_load=False, poll_seconds=0, **settings))
    return app, app.extensions["nnserve"].registry


def _reasons(registry) -> dict[str, str]:
    return {e["name"]: e["reason"] for e in registry.index() if e["state"] != "READY"}


MULTI_IO_CONFIG = """name: "{name}"
max_batch_size: {mbs}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {xdims} ] }}{more}
        {{ name: "n" data_type: {ntype} dims: [ 3 ] }} ]
output [ {{ name: "sum" data_type: TYPE_FP32 dims: [ 3 ] }} ]
"""
MISMATCHES = {
    "wrong-dims": (dict(xdims="4"), "tensor 'x': the model expects 2 dimensions (shape [-1,3]) but the model "
                                    "configuration specifies 2 dimensions (an initial batch dimension"),
    "extra-dim": (dict(xdims="3, 1"), "the model expects 2 dimensions (shape [-1,3]) but the model configuration "
                                      "specifies 3 dimensions"),
    "unknown-input": (dict(more=' { name: "y" data_type: TYPE_FP32 dims: [ 3 ] },'),
                      "configuration expects 3 inputs, model provides 2"),
    "wrong-type": (dict(ntype="TYPE_INT32"), "configuration expects datatype TYPE_INT32 for input 'n', model "
                                             "provides TYPE_INT64"),
    "named-otherwise": (dict(name="someone-else"), "unexpected directory name 'named-otherwise' for model "
                                                   "'someone-else', directory name must equal model name"),
}


def test_each_config_mismatch_is_refused_with_tritons_reason_and_the_others_serve(tmp_path):
    data = fm.write_model(tmp_path / "scratch", BY_NAME["multi-io"]).joinpath("model.onnx").read_bytes()
    for folder, (values, _) in MISMATCHES.items():
        (tmp_path / "repo" / folder / "1").mkdir(parents=True)
        (tmp_path / "repo" / folder / "1" / "model.onnx").write_bytes(data)
        fields = {"name": folder, "mbs": 8, "xdims": "3", "more": "", "ntype": "TYPE_INT64", **values}
        (tmp_path / "repo" / folder / "config.pbtxt").write_text(MULTI_IO_CONFIG.format(**fields))
    # an input the graph lacks, with the count right: the name is the reason
    unknown = tmp_path / "repo" / "renamed-input"
    shutil.copytree(tmp_path / "repo" / "wrong-dims", unknown)
    (unknown / "config.pbtxt").write_text(MULTI_IO_CONFIG.format(name="renamed-input", mbs=8, xdims="3", more="",
                                                                 ntype="TYPE_INT64").replace('"n"', '"m"'))
    too_few = tmp_path / "repo" / "too-few-inputs"
    shutil.copytree(tmp_path / "repo" / "wrong-dims", too_few)
    (too_few / "config.pbtxt").write_text('name: "too-few-inputs" max_batch_size: 8 input [ { name: "x" '
                                          'data_type: TYPE_FP32 dims: [ 3 ] } ] output [ { name: "sum" '
                                          'data_type: TYPE_FP32 dims: [ 3 ] } ]')
    no_batch = tmp_path / "repo" / "cannot-batch"
    fm.write_model(tmp_path / "repo", BY_NAME["no-batch-dim"]).parent.rename(no_batch)
    (no_batch / "config.pbtxt").write_text("max_batch_size: 8\n")
    fm.write_model(tmp_path / "repo", BY_NAME["names-with-slashes"])
    app, registry = _app(tmp_path / "repo")
    reasons = _reasons(registry)
    for folder, (_, reason) in MISMATCHES.items():
        assert reason in reasons[folder], (folder, reasons[folder])
    assert "unexpected inference input 'm', allowed inputs are: n, x" in reasons["renamed-input"]
    assert "configuration expects 1 inputs, model provides 2" in reasons["too-few-inputs"]
    assert ("autofill failed for model 'cannot-batch': model does not support batching while non-zero "
            "max_batch_size is specified") in reasons["cannot-batch"]
    answer = app.test_client().post("/v2/models/names-with-slashes/infer", json={"inputs": [
        {"name": "input/0:x.y", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1.5]}]})
    assert answer.status_code == 200 and answer.get_json()["outputs"][0]["name"] == "out/prob:0"


def test_hostile_model_files_are_refused_with_a_reason_and_the_others_keep_serving(tmp_path):
    repo = tmp_path / "repo"
    hostile = fm.hostile_models(tmp_path / "outside")
    for case, data in hostile.items():
        (repo / case / "1").mkdir(parents=True)
        (repo / case / "1" / "model.onnx").write_bytes(data)
    (repo / "external-data-parent" / "secret.bin").write_bytes(fm.SECRET.tobytes())  # really there, outside 1/
    fm.place_symlinked_external(repo / "external-data-symlink" / "1", tmp_path / "outside" / "secret.bin")
    fm.place_sparse_file(repo / "huge-external" / "1" / "huge.bin", 4 * np.prod(fm.HUGE_DIMS))
    fm.write_model(repo, BY_NAME["multi-io"])
    app, registry = _app(repo, max_model_bytes=16 << 20)
    reasons = _reasons(registry)
    assert "external data '../secret.bin' points outside the version folder" in reasons["external-data-parent"]
    assert "external data '/etc/passwd' points outside the version folder" in reasons["external-data-absolute"]
    assert "external data 'weights.bin' is a symbolic link" in reasons["external-data-symlink"]
    assert "com.example.unknown:Foo" in reasons["unknown-domain"]
    assert "ONNX Runtime cannot load model.onnx" in reasons["unloadable"] and "ghost" in reasons["unloadable"]
    assert reasons["empty"] == "model.onnx: the file is empty"
    assert "model.onnx: not a valid ONNX model" in reasons["truncated"]
    declared = fm.declared_initializer_bytes(hostile["huge-external"])  # 1 GiB beside a small graph
    assert f"its stored tensors declare {declared} bytes, more than the limit of {16 << 20}" in reasons["huge-external"]
    size = len(hostile["huge-initializer"])  # 64 MiB inside the file: refused before it is read
    assert reasons["huge-initializer"] == f"model.onnx: {size} bytes, more than the limit of {16 << 20} " \
                                          "(NNSERVE_MAX_MODEL_BYTES)"
    assert set(reasons) == set(hostile)
    assert not registry.is_ready()  # readiness keeps its meaning; the index says which model failed and why
    client = app.test_client()
    answer = client.post("/v2/models/multi-io/infer", json={"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "n", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]})
    assert answer.status_code == 200
    assert client.get("/v2/models/external-data-parent/config").status_code == 503


def _bytes_body(name: str, shape: list[int], chunk: bytes) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [
        {"name": name, "shape": shape, "datatype": "BYTES", "parameters": {"binary_data_size": len(chunk)}},
        {"name": "tokens", "shape": [shape[0], 2], "datatype": "BYTES", "data": [["a", "b"]] * shape[0]}]}).encode()
    return header + chunk, {"Inference-Header-Content-Length": str(len(header))}


def _elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


BYTES_CASES = {
    "length past the end": (_elements(b"abc")[:-1], [1, 1], "element 0 declares 3 bytes, only 2 are left"),
    "prefix cut short": (_elements(b"abc") + b"\x01\x00", [2, 1], "element 1's 4-byte length prefix runs past"),
    "fewer elements than the shape": (_elements(b"a"), [2, 1], "2 BYTES elements need at least 8 bytes"),
    "more elements than the shape": (_elements(b"a", b"b"), [1, 1], "bytes follow the 1 BYTES elements"),
    "a huge element count": (_elements(b"a"), [4, 1], "4 BYTES elements need at least 16 bytes"),
    "invalid UTF-8": (_elements(b"caf\xe9"), [1, 1], "element 0 is not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BYTES_CASES))
def test_bad_bytes_inputs_get_a_4xx_that_names_the_tensor(tmp_path, case):
    fm.write_model(tmp_path, BY_NAME["string-in-out"])
    app, _ = _app(tmp_path)
    chunk, shape, fragment = BYTES_CASES[case]
    body, headers = _bytes_body("text", shape, chunk)
    answer = app.test_client().post("/v2/models/string-in-out/infer", data=body, headers=headers)
    assert answer.status_code == 400
    assert "input 'text'" in answer.get_json()["error"] and fragment in answer.get_json()["error"]


def test_strings_in_json_must_all_be_strings(tmp_path):
    fm.write_model(tmp_path, BY_NAME["string-in-out"])
    app, _ = _app(tmp_path)
    answer = app.test_client().post("/v2/models/string-in-out/infer", json={"inputs": [
        {"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": ["a", 1]},
        {"name": "tokens", "shape": [2, 2], "datatype": "BYTES", "data": [["a", "b"], ["c", 2.5]]}]})
    error = answer.get_json()["error"]
    assert answer.status_code == 400
    assert "input 'text'.data: expected BYTES elements as JSON strings, got int" in error
    assert "input 'tokens'.data: expected BYTES elements as JSON strings, got float" in error


def _expand_model() -> bytes:
    """y = Expand(x, shape): the shape input is data, and made-up values make the graph fail."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])], "expand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_warm_up_uses_the_configs_samples_and_never_makes_up_data(tmp_path):
    for name in ("expand", "expand-bad-warmup", "expand-good-warmup"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(_expand_model())
    sample = ('model_warmup [ {{ name: "s" batch_size: 1 inputs {{ key: "x" value: {{ data_type: TYPE_FP32 '
              'dims: [ 2 ] zero_data: true }} }} inputs {{ key: "shape" value: {{ data_type: TYPE_INT64 dims: [ 2 ] '
              '{shape} }} }} }} ]')
    (tmp_path / "expand-bad-warmup" / "config.pbtxt").write_text(sample.format(shape="zero_data: true"))
    (tmp_path / "expand-good-warmup" / "warmup").mkdir()
    (tmp_path / "expand-good-warmup" / "warmup" / "shape").write_bytes(np.array([3, 2], "<i8").tobytes())
    (tmp_path / "expand-good-warmup" / "config.pbtxt").write_text(sample.format(shape='input_data_file: "shape"'))
    app, registry = _app(tmp_path)
    reasons = _reasons(registry)
    assert list(reasons) == ["expand-bad-warmup"] and "warm-up inference failed" in reasons["expand-bad-warmup"]
    answer = app.test_client().post("/v2/models/expand/infer", json={"inputs": [
        {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]},
        {"name": "shape", "shape": [2], "datatype": "INT64", "data": [3, 2]}]})
    assert answer.status_code == 200 and answer.get_json()["outputs"][0]["shape"] == [3, 2]


def test_non_finite_outputs_are_answered_not_blamed_on_the_request(tmp_path):
    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "sqrt",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])])
    (tmp_path / "sqrt" / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              tmp_path / "sqrt" / "1" / "model.onnx")
    app, _ = _app(tmp_path)
    request = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [4.0, -1.0]}]}
    answer = app.test_client().post("/v2/models/sqrt/infer", json=request)
    assert answer.status_code == 200
    assert answer.get_data().endswith(b'"data":[2.0,NaN]}]}')
    assert json.loads(answer.get_data())["outputs"][0]["data"][0] == 2.0  # Python's json (and tritonclient) read it
    binary = app.test_client().post("/v2/models/sqrt/infer", json={**request, "parameters": {
        "binary_data_output": True}})
    header = int(binary.headers["Inference-Header-Content-Length"])
    values = np.frombuffer(binary.get_data()[header:], dtype="<f4")
    assert values[0] == 2.0 and np.isnan(values[1])


def test_version_policy_and_hand_copied_versions(tmp_path):
    """The folder name is the version: a zoo version copied by hand (its metadata says 1) and a plain model.onnx
    are served; config.pbtxt's version_policy picks which."""
    for name, policy in (("all-versions", "version_policy: { all { } }"),
                         ("specific", "version_policy: { specific { versions: [ 1, 3 ] } }"),
                         ("latest", "version_policy: { latest { num_versions: 1 } }")):
        shutil.copytree(SHIPPED_MODELS / "digits-mlp", tmp_path / name)
        config = (tmp_path / name / "config.pbtxt").read_text().replace('"digits-mlp"', f'"{name}"')
        (tmp_path / name / "config.pbtxt").write_text(config + policy + "\n")
        shutil.copytree(tmp_path / name / "1", tmp_path / name / "2")  # by hand: metadata.json still says 1
        (tmp_path / name / "3").mkdir()
        shutil.copy(tmp_path / name / "1" / "model.onnx", tmp_path / name / "3" / "model.onnx")  # plain file
    app, registry = _app(tmp_path, version_policy="latest")
    assert _reasons(registry) == {}
    assert registry.versions("all-versions") == [1, 2, 3]
    assert registry.versions("specific") == [1, 3] and registry.versions("latest") == [3]
    client = app.test_client()
    copied = client.get("/v2/models/all-versions/versions/2").get_json()
    assert copied["parameters"]["task"] == "multiclass"  # the copied version keeps its nnserve layer
    config = client.get("/v2/models/specific/config").get_json()
    assert config["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert config["parameters"]["task"] == {"string_value": "multiclass"}


def test_classification_and_predict_work_for_a_foreign_model(tmp_path):
    fm.write_model(tmp_path, BY_NAME["skl-wine-pipeline"])
    app, _ = _app(tmp_path)
    client = app.test_client()
    level, measures = BY_NAME["skl-wine-pipeline"].inputs["level"], BY_NAME["skl-wine-pipeline"].inputs["measures"]
    answer = client.post("/v2/models/skl-wine-pipeline/infer", json={
        "inputs": [{"name": "level", "shape": [1, 1], "datatype": "BYTES", "data": [str(level[0, 0])]},
                   {"name": "measures", "shape": [1, 4], "datatype": "FP32", "data": measures[0].tolist()}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}).get_json()
    want = fm.expected_outputs(BY_NAME["skl-wine-pipeline"])["probabilities"][0]
    top = answer["outputs"][0]
    assert top["datatype"] == "BYTES" and top["shape"] == [1, 2]
    assert [int(x.split(":")[1]) for x in top["data"]] == list(np.argsort(-want)[:2])
    predicted = client.post("/v1/models/skl-wine-pipeline:predict", json={"instances": [
        {"level": [str(level[0, 0])], "measures": measures[0].tolist()}]}).get_json()
    assert predicted["predictions"][0]["label"] == [str(fm.expected_outputs(BY_NAME["skl-wine-pipeline"])["label"][0])]


def test_check_validates_a_repository_of_models_from_elsewhere(tmp_path):
    from training.repository import check_repository

    for model in CORPUS:
        fm.write_model(tmp_path, model)
    assert check_repository(tmp_path) == []
    (tmp_path / "no-batch-dim" / "config.pbtxt").write_text("max_batch_size: 8\n")
    (tmp_path / "empty" / "1").mkdir(parents=True)
    (tmp_path / "empty" / "1" / "model.onnx").write_bytes(b"")
    assert check_repository(tmp_path) == [
        "empty/1: model.onnx: the file is empty",
        "no-batch-dim/1: autofill failed for model 'no-batch-dim': model does not support batching while non-zero "
        "max_batch_size is specified"]


# -- the parts, one by one ----------------------------------------------------------------------------------------
def test_the_pbtxt_reader_takes_what_protobufs_text_format_writes_and_names_what_it_cannot_read():
    from service.errors import ConfigError
    from service.pbtxt import parse_pbtxt

    fields = parse_pbtxt('# a comment\nname: "caf\\303\\251" input < name: "x" dims: [ 1, -1 ] > '
                         'input { name: \'y\' dims: 2 dims: 3 }; parameters { key: "k" value { string_value: "\\x41" } }')
    assert fields["name"] == ["café"] and [t["dims"] for t in fields["input"]] == [[1, -1], [2, 3]]
    assert fields["parameters"][0]["value"][0]["string_value"] == ["A"]
    for text, fragment in (("# note\n\u201cx\u201d", "line 2: cannot read"), ("a {" * 100, "nested more than"),
                           ("max_batch_size: 4x", "cannot read '4x'"), ("dims: [1,", "expected a value"),
                           ("input { name: \"x\"", "missing '}'")):
        with pytest.raises(ConfigError, match=fragment):
            parse_pbtxt(text)


def _one_input_config(tmp_path: Path, name: str, config: str, model: str = "multi-io") -> None:
    fm.write_model(tmp_path / "scratch", BY_NAME[model]).rename(tmp_path / "scratch" / "v")
    (tmp_path / name).mkdir()
    (tmp_path / "scratch" / "v").rename(tmp_path / name / "1")
    (tmp_path / name / "config.pbtxt").write_text(config)


@pytest.mark.parametrize("config, fragment", [
    ("max_batch_size: 4f", "max_batch_size: expected int"),
    ("version_policy { latest [ ] }", "version_policy.latest: expected a { ... } block"),
    ("model_warmup { inputs { key: \"x\" } }", "expected a { ... } block"),
    ("input [ { name: \"x\" data_type: TYPE_FP32 dims: [ 3 ] }, { name: \"x\" data_type: TYPE_FP32 dims: [ 3 ] } ] "
     "output [ { name: \"sum\" data_type: TYPE_FP32 dims: [ 3 ] } ] max_batch_size: 4", "listed more than once"),
    ("dynamic_batching { preferred_batch_size: [ 0 ] }", "expected sizes of 1 or more"),
    ("dynamic_batching { default_queue_policy { max_queue_size: -1 } }", "expected 0 (unbounded) or more"),
    ("instance_group [ { kind: KIND_GPU } ] ensemble_scheduling { }", "ensemble_scheduling is not supported"),
    ("sequence_batching { state [ { input_name: \"s\" output_name: \"t\" data_type: TYPE_FP32 dims: [ -1 ] } ] }",
     "nnserve keeps states of fixed dims"),
    ("sequence_batching { } dynamic_batching { }", "dynamic_batching and sequence_batching cannot both be given"),
    ("no_such_field: 1", "unknown field(s) ['no_such_field']"),
])
def test_a_config_nnserve_cannot_honour_is_refused_with_a_reason(tmp_path, config, fragment):
    _one_input_config(tmp_path, "m", config)
    _, registry = _app(tmp_path)
    assert fragment in _reasons(registry)["m"]


def _mul_model(folder: Path) -> None:
    """y = x * w, x [-1, 3, 1]; w an initializer (2.0) that an input may override."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 1]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, 1])], initializer=[weight])
    (folder / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              folder / "1" / "model.onnx")


MUL_OUTPUT = 'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] reshape { shape: [ 3, 1 ] } } ]'


def test_a_reshape_of_the_same_rank_and_an_optional_initializer_input(tmp_path):
    for name in ("reshaped", "optional", "optional-batching", "wrong-reshape"):
        _mul_model(tmp_path / name)
    (tmp_path / "reshaped" / "config.pbtxt").write_text(
        'max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] reshape { shape: [ 3, 1 ] } } ] '
        + MUL_OUTPUT)
    (tmp_path / "wrong-reshape" / "config.pbtxt").write_text(
        'max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] reshape { shape: [ 1, 3 ] } } ] '
        + MUL_OUTPUT)
    optional = ('input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3, 1 ] }, '
                '{ name: "w" data_type: TYPE_FP32 dims: [ 1 ] optional: true } ] '
                'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 3, 1 ] } ]')
    (tmp_path / "optional" / "config.pbtxt").write_text(optional)
    (tmp_path / "optional-batching" / "config.pbtxt").write_text(
        optional.replace("-1, 3, 1", "3, 1") + " max_batch_size: 8")
    app, registry = _app(tmp_path)
    reasons = _reasons(registry)
    assert sorted(reasons) == ["optional-batching", "wrong-reshape"]
    assert "optional input 'w' is not supported for models that support batching" in reasons["optional-batching"]
    assert "the model expects 3 dimensions (shape [-1,3,1])" in reasons["wrong-reshape"]
    client = app.test_client()
    x = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}
    answer = client.post("/v2/models/reshaped/infer", json={"inputs": [x]}).get_json()
    assert answer["outputs"][0]["shape"] == [2, 3] and answer["outputs"][0]["data"] == [2, 4, 6, 8, 10, 12]
    x3 = {**x, "shape": [2, 3, 1]}
    default = client.post("/v2/models/optional/infer", json={"inputs": [x3]}).get_json()
    assert default["outputs"][0]["data"] == [2, 4, 6, 8, 10, 12]
    given = client.post("/v2/models/optional/infer", json={"inputs": [
        x3, {"name": "w", "shape": [1], "datatype": "FP32", "data": [3]}]}).get_json()
    assert given["outputs"][0]["data"] == [3, 6, 9, 12, 15, 18]


def test_a_changed_config_reloads_the_serving_version_or_keeps_it_when_the_new_one_fails(tmp_path):
    fm.write_model(tmp_path, BY_NAME["multi-io"])
    app, registry = _app(tmp_path)
    assert registry.get("multi-io").max_batch_size == 4
    (tmp_path / "multi-io" / "config.pbtxt").write_text("max_batch_size: 16\n")
    registry.reconcile_all()
    assert registry.get("multi-io").max_batch_size == 16
    (tmp_path / "multi-io" / "config.pbtxt").write_text("max_batch_size: 32\nversion_policy { bogus { } }\n")
    registry.reconcile_all()
    assert registry.get("multi-io").max_batch_size == 16  # the earlier load serves on
    (tmp_path / "multi-io" / "config.pbtxt").write_text('max_batch_size: 32\nname: "other"\n')
    time.sleep(0.01)
    registry.reconcile_all()
    entry = next(e for e in registry.index() if e["name"] == "multi-io")
    assert registry.get("multi-io").max_batch_size == 16 and entry["state"] == "READY"
    assert "reloading failed, the earlier load serves on: unexpected directory name" in entry["reason"]


def test_classification_of_a_string_output_is_a_client_error(tmp_path):
    fm.write_model(tmp_path, BY_NAME["string-in-out"])
    app, _ = _app(tmp_path)
    answer = app.test_client().post("/v2/models/string-in-out/infer", json={
        "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["A"]},
                   {"name": "tokens", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}],
        "outputs": [{"name": "lower", "parameters": {"classification": 1}}]})
    assert answer.status_code == 400
    assert "output 'lower': classification ranks numeric scores, the output is BYTES" in answer.get_json()["error"]


def test_the_file_reader_counts_sparse_and_function_tensors_and_refuses_odd_locations(tmp_path):
    from service import onnxfile

    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("i", TensorProto.INT64, [1], [0])
    sparse = helper.make_sparse_tensor(values, indices, [1 << 20, 1 << 10])  # 4 GiB once dense
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph.sparse_initializer.append(sparse)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert onnxfile.inspect(model.SerializeToString()).tensor_bytes >= 4 << 30
    for location in ("a\\b", "a\0b", "../x", "/etc/passwd"):
        facts = onnxfile.ModelFacts(external=[location])
        assert onnxfile.unsafe_external_data(facts, tmp_path), location
    dims = b"".join(b"\x08" + bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x07]) for _ in range(200_000))  # a million-dim tensor
    tensor = b"\x2a" + _varint(len(dims)) + dims  # TensorProto inside GraphProto.initializer (5)
    start = time.monotonic()
    facts = onnxfile.inspect(b"\x3a" + _varint(len(tensor)) + tensor)  # ModelProto.graph (7)
    assert facts.tensor_bytes == 1 << 63 and time.monotonic() - start < 5


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)
