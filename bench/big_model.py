"""A 400 MB model under the server's default two workers: memory (RSS and PSS of the whole process tree) and time
to ready, with the workers sharing its weights (the default) and with each holding its own copy.

    .venv-dev/bin/python -m bench.big_model [--out F]

The model is one 10240x10240 FP32 MatMul (400 MiB of weights, stored inside model.onnx), written to a temporary
repository. Each server is started with `python -m service` (2 workers, gRPC off); readiness is polled, then one
inference is checked and the memory read.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.run import ROOT, free_port, tree_memory

SIZE = 10240


def write_model(repository: Path) -> int:
    weight = (np.random.default_rng(0).standard_normal((SIZE, SIZE), dtype=np.float32) * 0.01)
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["output"])], "big",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", SIZE])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", SIZE])],
                              [numpy_helper.from_array(weight, "w")])
    (repository / "big" / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              repository / "big" / "1" / "model.onnx")
    return weight.nbytes


def serve(repository: Path, *flags: str) -> dict:
    port = free_port()
    began = time.monotonic()
    server = subprocess.Popen([str(ROOT / ".venv/bin/python"), "-m", "service", "--models", str(repository),
                               "--port", str(port), "--grpc-port", "0", "--workers", "2", *flags], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, SIZE], "datatype": "FP32",
                                       "data": [1.0] * SIZE}]})
        ready = 0
        while ready < 20:  # 20 fresh connections in a row: both workers ready
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v2/health/ready")
                ready = ready + 1 if conn.getresponse().status == 200 else 0
            except OSError:
                ready = 0
            if time.monotonic() - began > 300:
                raise RuntimeError("not ready in 300 s")
            time.sleep(0.02 if ready else 0.1)
        ready_s = time.monotonic() - began
        for _ in range(4):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v2/models/big/infer", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
        return {"flags": " ".join(flags) or "(defaults)", "ready_s": ready_s, **tree_memory(server.pid)}
    finally:
        server.terminate()
        server.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.big_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nnserve-big-") as tmp:
        model_bytes = write_model(Path(tmp) / "models")
        rows = [serve(Path(tmp) / "models"), serve(Path(tmp) / "models", "--share-weights-bytes", "0")]
    for r in rows:
        r["pss_to_model"] = r["pss_mib"] * 2**20 / model_bytes
        print(f"{r['flags']:<26} ready {r['ready_s']:5.1f} s, {r['processes']} processes, RSS {r['rss_mib']:6.0f} MiB, "
              f"PSS {r['pss_mib']:6.0f} MiB = {r['pss_to_model']:.2f}x the model's {model_bytes / 2**20:.0f} MiB",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps({"model_bytes": model_bytes, "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
