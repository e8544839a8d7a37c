"""Big models' weights shared by the worker processes: the external-data rewrite, then the real server."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service import onnxfile
from tests.conftest import start_server, worker_pids


def model_bytes(hidden: int = 512) -> bytes:
    """x[n, 64] -> MatMul 64 x hidden -> MatMul hidden x 10 -> + bias: two big initializers and a small one."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((64, hidden)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.standard_normal((hidden, 10)).astype(np.float32), "w2"),
               numpy_helper.from_array(np.arange(10, dtype=np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y0"]),
             helper.make_node("Add", ["y0", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_externalize_moves_the_big_initializers_to_aligned_external_data(tmp_path):
    data = model_bytes()
    moved = onnxfile.externalize(data, tmp_path, threshold=1000)
    assert moved == (64 * 512 + 512 * 10) * 4
    rewritten = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    places = {t.name: {e.key: e.value for e in t.external_data} for t in rewritten.graph.initializer}
    assert places["b"] == {}  # under the threshold: stays in the graph
    assert {places["w1"]["location"], places["w2"]["location"]} == {"weights.bin"}
    assert all(int(places[n]["offset"]) % onnxfile.ALIGNMENT == 0 for n in ("w1", "w2"))
    assert onnxfile.inspect((tmp_path / "model.onnx").read_bytes()).external == ["weights.bin", "weights.bin"]
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    want = ort.InferenceSession(data).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)  # the same weights, bit for bit


def _mapped_weights(pid: int) -> set[str]:
    return {line.split(maxsplit=5)[5].strip() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if line.rstrip().endswith("/weights.bin")}


def _infer(srv, x: np.ndarray) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()
    status, _, data = srv.request("POST", "/v2/models/big/infer", body)
    assert status == 200, data
    return np.asarray(json.loads(data)["outputs"][0]["data"], np.float32).reshape(len(x), 10)


@pytest.mark.parametrize("share", [True, False])
def test_workers_map_one_copy_of_a_big_models_weights(tmp_path, share):
    data = model_bytes(hidden=4096)  # 1.2 MB of weights
    (tmp_path / "repo" / "big" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "big" / "1" / "model.onnx").write_bytes(data)
    srv = start_server(tmp_path / "repo", tmp_path, "--workers", "2", "--poll-seconds", "0.2",
                       "--share-weights-bytes", "1000000" if share else "0")
    try:
        x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
        want = ort.InferenceSession(data).run(None, {"x": x})[0]
        for _ in range(6):  # both workers answer
            np.testing.assert_allclose(_infer(srv, x), want, rtol=1e-4, atol=1e-3)
        workers = worker_pids(srv.process.pid)
        mapped = [_mapped_weights(pid) for pid in workers]
        if not share:
            assert mapped == [set(), set()]
            return
        assert len(workers) == 2 and mapped[0] == mapped[1] and len(mapped[0]) == 1, mapped  # one file, both
        first = next(iter(mapped[0]))
        assert "from memory-mapped weights shared by the workers" in srv.log.read_text()
        # a new version, copied in: its own shared copy, mapped by both workers beside the first
        (tmp_path / "repo" / "big" / ".tmp-2").mkdir()
        (tmp_path / "repo" / "big" / ".tmp-2" / "model.onnx").write_bytes(model_bytes(hidden=4097))
        (tmp_path / "repo" / "big" / ".tmp-2").rename(tmp_path / "repo" / "big" / "2")
        deadline = time.monotonic() + 20
        while True:
            mapped = [_mapped_weights(pid) for pid in workers]
            if all(len(m) == 2 for m in mapped):
                break
            assert time.monotonic() < deadline, mapped
            time.sleep(0.2)
        assert mapped[0] == mapped[1] and first in mapped[0]
    finally:
        srv.stop()
