"""What a streamed step of co2-lstm-stream costs the server, against resending the 52-week window to co2-lstm, and
whether a step costs more late in a long sequence than at its start.

    .venv-dev/bin/python -m bench.stream_cost [--requests 400]

One server (one worker) serves this checkout's models/. A client on one keep-alive connection sends, one after
another: `--requests` window requests (52 weekly values, JSON); the first `--requests` steps of new sequences
(each sequence's step 1, a START); then one sequence advanced to step 1,000 and its next `--requests` steps. For
each it reads the server's CPU time (all its processes, /proc) and prints microseconds per request and the ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from pathlib import Path

from bench.run import Server, tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "stream_cost"  # the server's log


def post(conn: http.client.HTTPConnection, path: str, body: dict) -> dict:
    conn.request("POST", path, json.dumps(body).encode())
    response = conn.getresponse()
    answer = json.loads(response.read())
    if response.status != 200:
        raise SystemExit(f"{path}: {response.status} {answer}")
    return answer


def step_body(value: float, sequence_id: int, start: bool) -> dict:
    return {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [value]}],
            "parameters": {"sequence_id": sequence_id, "sequence_start": start}}


def cpu_per_request(pid: int, send, count: int) -> float:
    before = tree_cpu_seconds(pid)
    for i in range(count):
        send(i)
    return (tree_cpu_seconds(pid) - before) * 1e6 / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    from statsmodels.datasets import co2

    series = co2.load_pandas().data["co2"].interpolate().to_numpy("float32").tolist()
    argv = lambda port, grpc_port: [sys.executable, "-m", "service", "--port", str(port), "--grpc-port", "0",
                                    "--workers", "1", "--models", str(ROOT / "models")]
    OUT.mkdir(parents=True, exist_ok=True)
    server = Server("stream-cost", {"argv": argv, "env": {}}, OUT)
    try:
        server.wait_ready()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        window = {"inputs": [{"name": "input", "shape": [1, 52], "datatype": "FP32", "data": series[:52]}]}
        for _ in range(50):  # warm-up of both models
            post(conn, "/v2/models/co2-lstm/infer", window)
            post(conn, "/v2/models/co2-lstm-stream/infer", step_body(series[0], 1, True))
        results = {
            "window of 52 (co2-lstm)": cpu_per_request(
                server.proc.pid, lambda i: post(conn, "/v2/models/co2-lstm/infer", window), args.requests),
            "step 1 (co2-lstm-stream)": cpu_per_request(
                server.proc.pid, lambda i: post(conn, "/v2/models/co2-lstm-stream/infer",
                                           step_body(series[i % 100], 10_000 + i, True)), args.requests)}
        for week in range(1000):  # one sequence to step 1,000
            post(conn, "/v2/models/co2-lstm-stream/infer", step_body(series[week % len(series)], 7, week == 0))
        results["step 1,001+ (co2-lstm-stream)"] = cpu_per_request(
            server.proc.pid, lambda i: post(conn, "/v2/models/co2-lstm-stream/infer",
                                       step_body(series[(1000 + i) % len(series)], 7, False)), args.requests)
    finally:
        server.stop(OUT)
    for name, value in results.items():
        print(f"{name:32s} {value:8.1f} µs of server CPU per request")
    window_cost = results["window of 52 (co2-lstm)"]
    late, early = results["step 1,001+ (co2-lstm-stream)"], results["step 1 (co2-lstm-stream)"]
    print(f"window / late step: {window_cost / late:.2f}x; late step / step 1: {late / early:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
