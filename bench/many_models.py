"""A repository of many small models: time to ready, memory, idle CPU and request latency against a 10-model one.

    .venv-dev/bin/python -m bench.many_models [--models 300] [--idle-seconds 60] [--requests 2000] [--out F]

Each model is a copy of one small generated MLP (64 -> 32 -> 10, softmax) with its own config.pbtxt. The same
server command serves a 10-model and an N-model repository in turn (`make serve`'s defaults: two workers, hot
reload polling every 5 s). For each: seconds from start to readiness, RSS and PSS of the process tree, the CPU the
idle server uses over `--idle-seconds` (as a share of one core), and the p50 and p99 of GET /v2/models/{m} and of a
one-sample JSON infer over one keep-alive connection, on models drawn at random.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.run import ROOT, free_port, tree_cpu_seconds, tree_memory

CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ndynamic_batching { }\n'


def small_mlp() -> bytes:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.standard_normal((32, 10)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 64])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["b", 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def write_repository(folder: Path, count: int) -> list[str]:
    data, names = small_mlp(), [f"m{i:04d}" for i in range(count)]
    for name in names:
        (folder / name / "1").mkdir(parents=True)
        (folder / name / "1" / "model.onnx").write_bytes(data)
        (folder / name / "config.pbtxt").write_text(CONFIG)
    return names


def latencies(port: int, names: list[str], requests: int) -> dict:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    conn, rng, out = http.client.HTTPConnection("127.0.0.1", port, timeout=10), random.Random(0), {}
    for kind in ("metadata", "infer"):
        times = []
        for _ in range(requests):
            name = rng.choice(names)
            began = time.perf_counter()
            if kind == "metadata":
                conn.request("GET", f"/v2/models/{name}")
            else:
                conn.request("POST", f"/v2/models/{name}/infer", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, (kind, name, response.status)
            times.append(time.perf_counter() - began)
        out[kind] = {"p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}
    conn.close()
    return out


def measure(count: int, idle_seconds: float, requests: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="nnserve-many-") as tmp:
        names = write_repository(Path(tmp) / "models", count)
        port = free_port()
        began = time.monotonic()
        server = subprocess.Popen([str(ROOT / ".venv/bin/python"), "-m", "service", "--models", str(Path(tmp) / "models"),
                                   "--port", str(port), "--grpc-port", "0"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/v2/health/ready")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() - began > 600:
                    raise RuntimeError("not ready in 600 s")
                time.sleep(0.05)
            ready_s = time.monotonic() - began
            time.sleep(2)  # the other worker too
            memory = tree_memory(server.pid)
            cpu0 = tree_cpu_seconds(server.pid)
            time.sleep(idle_seconds)
            idle = (tree_cpu_seconds(server.pid) - cpu0) / idle_seconds
            result = {"models": count, "ready_s": ready_s, "rss_mib": memory["rss_mib"], "pss_mib": memory["pss_mib"],
                      "idle_core_share": idle, **latencies(port, names, requests)}
        finally:
            server.terminate()
            server.wait(60)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.many_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    rows = [measure(n, args.idle_seconds, args.requests) for n in (10, args.models)]
    for r in rows:
        print(f"{r['models']:>4} models: ready {r['ready_s']:.1f} s, RSS {r['rss_mib']:.0f} MiB, PSS {r['pss_mib']:.0f} "
              f"MiB, idle CPU {r['idle_core_share']:.2%} of a core, GET metadata p50 {r['metadata']['p50_ms']:.3f} ms "
              f"(p99 {r['metadata']['p99_ms']:.3f}), infer p50 {r['infer']['p50_ms']:.3f} ms "
              f"(p99 {r['infer']['p99_ms']:.3f})", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
