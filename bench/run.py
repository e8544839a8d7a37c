"""nnserve's benchmark suite, first version: measurement only.

One command (`make bench`, or `.venv-dev/bin/python -m bench.run [--quick] [--duration S]`) that, in one run:

1. measures the in-process floor: ONNX Runtime `session.run` median at batch 1 and 32 for each model;
2. starts each server in turn on a free 127.0.0.1 port, waits for readiness, and drives it with wrk at
   concurrency 1, 8 and 64 for a fixed duration with a fixed one-sample V2 body:
   - nnserve (`.venv/bin/python -m service --models models --port P`, its defaults; JSON and binary bodies,
     and its gRPC endpoint driven by h2load, from Debian's nghttp2-client, with unary ModelInfer calls:
     h2load gives no percentiles, so gRPC rows have the mean and the maximum latency),
   - the naive baseline (bench/naive_app.py under gunicorn gthread, 2 workers x 4 threads; JSON),
   - torch eager behind the same naive app (bench/torch_app.py, same gunicorn settings, `.venv-dev`; JSON);
   - PyTriton, a real tritonserver, with ONNX Runtime in its Python callable (bench/pytriton_app.py,
     `.venv-pytriton`; its gRPC endpoint, digits-mlp and digits-cnn), for nnserve's gRPC to be compared with;
3. records requests/s, p50/p99 latency, errors (non-2xx + socket errors), server CPU microseconds per request
   (utime+stime of the server's whole process tree from /proc, before and after), wrk's own CPU, and every
   figure as a ratio to the naive baseline's in the same run; RSS (and PSS) of each server's process tree;
4. writes bench/results/results.json, results.md and chart.png.

wrk runs on the same machine as the server, so the client takes CPU from the server: the figures are for a
client and a server sharing the cores, and the report says so.

Needs: wrk and h2load on PATH, `.venv`, `.venv-dev` and `.venv-pytriton`, and finished zoo run folders in runs/zoo
for the torch app (`make bench` provides them all).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import sysconfig
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import grpc_h2load

ROOT = Path(__file__).resolve().parent.parent
ZOO_MODELS = ["digits-mlp", "digits-cnn", "co2-lstm", "digits-transformer"]
MODELS = [*ZOO_MODELS, "mnist-cnn"]  # mnist-cnn: generated (bench/compute_models.py), the compute-bound one
CONCURRENCY = [1, 8, 64]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# One fixed, deterministic sample per model (batch 1), in each dataset's own units.
def sample(model: str) -> np.ndarray:
    i = np.arange(64, dtype=np.float32)
    if model == "digits-mlp":
        return ((i * 7) % 17).reshape(1, 64)  # pixel intensities 0..16
    if model == "digits-cnn":
        return ((i * 7) % 17).reshape(1, 1, 8, 8)
    if model == "mnist-cnn":  # bench/compute_models.py: a 28x28 grey image, pixel intensities 0..255
        return ((np.arange(784, dtype=np.float32) * 37) % 256).reshape(1, 1, 28, 28)
    if model == "digits-transformer":
        return ((i * 7) % 17).reshape(1, 8, 8)  # 8 rows of 8 pixels as tokens
    if model == "co2-lstm":
        t = np.arange(52, dtype=np.float32)  # one window (task_params.window) of weekly CO2 ppm
        return (340.0 + 0.035 * t + 3.0 * np.sin(2 * np.pi * t / 52)).astype(np.float32).reshape(1, 52)
    raise ValueError(f"no sample for model {model!r}; known: {MODELS}")


def json_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()


def binary_body(x: np.ndarray) -> tuple[bytes, int]:
    """Triton's binary tensor extension: JSON header, then the raw little-endian float32 bytes.

    Outputs are asked for in binary too (`binary_data_output`), as tritonclient does by default."""
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, len(header)


# ---------------------------------------------------------------- in-process floor

def floor(models: list[str], repository: Path, seconds: float) -> list[dict]:
    import onnxruntime as ort

    rows = []
    for model in models:
        for label, threads in (("default", 0), ("1 thread", 1)):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), opts,
                                           providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            for batch in (1, 32):
                x = np.repeat(sample(model), batch, axis=0)
                for _ in range(20):
                    session.run(None, {name: x})
                times, end = [], time.perf_counter() + seconds
                while time.perf_counter() < end or len(times) < 50:
                    t0 = time.perf_counter_ns()
                    session.run(None, {name: x})
                    times.append(time.perf_counter_ns() - t0)
                median_us = statistics.median(times) / 1000
                rows.append({"model": model, "ort_threads": label, "batch": batch, "median_us": median_us,
                             "per_sample_us": median_us / batch, "calls": len(times)})
    return rows


# ---------------------------------------------------------------- process tree accounting

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid: int) -> list[int]:
    children, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of every live process of the tree (all their threads included)."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat: utime, stime
    return total / CLK_TCK


def tree_memory(pid: int) -> dict:
    rss = pss = 0
    pids = tree(pid)
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return {"processes": len(pids), "rss_mib": rss / 1024, "pss_mib": pss / 1024}


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# nnserve run with one flag changed: name -> (flags, what to know about it)
FLAG_VARIANTS = {
    "nnserve-gunicorn": (["--server", "gunicorn"], " (gthread workers)"),
    "nnserve-access-log": (["--access-log"], " (one JSON line per request)"),
    "nnserve-4-threads": (["--threads", "4"], ""),
    "nnserve-32-threads": (["--threads", "32"], ""),
    "nnserve-1-worker": (["--workers", "1"], " (ONNX Runtime then gets 2 threads)"),
    "nnserve-16-threads": (["--threads", "16"], ""),
    "nnserve-unbatched": (["--no-dynamic-batching"], " (every request runs on its own, whatever config.pbtxt says)"),
}
SERVERS = ["nnserve", "naive", "torch", "pytriton", *FLAG_VARIANTS]
PYTRITON_MODELS = ["digits-mlp", "digits-cnn", "mnist-cnn"]  # what bench/pytriton_app.py serves


def server_specs(models: list[str], repository: Path, runs: Path, workdir: Path) -> dict[str, dict]:
    gthread = ["-k", "gthread", "-w", "2", "--threads", "4", "--timeout", "60"]
    service = [str(ROOT / ".venv/bin/python"), "-m", "service", "--models"]
    return {
        "nnserve": {
            "argv": lambda port, grpc_port: [*service, str(repository), "--port", str(port)],
            "env": {}, "encodings": ["json", "binary", "grpc"],
            "describe": "python -m service (its defaults: granian WSGI, one worker per CPU, 8 threads, dynamic batching as "
                        "the shipped config.pbtxt files say (on, queue delay 0); "
                        "gRPC driven by h2load)",
        },
        # Variants, for what each choice buys (not in the default run): --servers nnserve nnserve-gunicorn ...
        **{name: {"argv": lambda port, grpc_port, flags=flags: [*service, str(repository), "--port", str(port),
                                                                 *flags],
                  "env": {}, "encodings": ["json", "binary"] if name == "nnserve-unbatched" else ["json"],
                  "describe": f"python -m service {' '.join(flags)}{note}"}
           for name, (flags, note) in FLAG_VARIANTS.items()},
        "naive": {
            "argv": lambda port, grpc_port: [str(ROOT / ".venv/bin/gunicorn"), *gthread, "-b",
                                             f"127.0.0.1:{port}", "bench.naive_app:create_app()"],
            "env": {"NAIVE_MODELS": ",".join(models), "NAIVE_REPOSITORY": str(repository)}, "encodings": ["json"],
            "describe": "bench/naive_app.py: Flask + ORT, gunicorn gthread 2 workers x 4 threads",
        },
        "pytriton": {
            "argv": lambda port, grpc_port: [str(ROOT / ".venv-pytriton/bin/python"), "bench/pytriton_app.py",
                                             str(port), str(grpc_port), str(free_port()),
                                             *[m for m in models if m in PYTRITON_MODELS]],
            "env": {"LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR"), "PYTRITON_REPOSITORY": str(repository)},
            "encodings": ["json", "binary", "grpc"], "models": [m for m in models if m in PYTRITON_MODELS],
            "model_ready": True,
            "describe": "bench/pytriton_app.py: PyTriton 0.5.14 (tritonserver 2.51), ONNX Runtime in its Python "
                        "callable, max_batch_size 64, its dynamic batcher; HTTP by wrk, gRPC by h2load",
        },
        "torch": {
            "argv": lambda port, grpc_port: [str(ROOT / ".venv-dev/bin/gunicorn"), *gthread, "-b",
                                             f"127.0.0.1:{port}", "bench.torch_app:create_app()"],
            "env": {"TORCH_MODELS": ",".join(m for m in models if m in ZOO_MODELS), "TORCH_RUNS": str(runs)},
            "encodings": ["json"], "models": ZOO_MODELS,
            "describe": "bench/torch_app.py: Flask + torch eager, gunicorn gthread 2 workers x 4 threads",
        },
    }


class Server:
    def __init__(self, name: str, spec: dict, log_dir: Path):
        self.name, self.spec = name, spec
        self.port = free_port()
        self.grpc_port = free_port()  # nnserve's gRPC endpoint (the other servers ignore the variable)
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        env = {**os.environ, **spec["env"], "PYTHONUNBUFFERED": "1", "NNSERVE_GRPC_PORT": str(self.grpc_port)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(spec["argv"](self.port, self.grpc_port), cwd=spec.get("cwd", ROOT), env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 180) -> float:
        """Until readiness answers 200 on 20 fresh connections in a row (so every worker had a chance)."""
        start = time.monotonic()
        streak = 0
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status, _, _ = self.request("GET", "/v2/health/ready", timeout=2)
            except OSError:
                status = None
            streak = streak + 1 if status == 200 else 0
            if streak >= 20:
                return time.monotonic() - start
            time.sleep(0.05 if streak else 0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log_path}")

    def wait_model_ready(self, model: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.request("GET", f"/v2/models/{model}/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name}: model {model} not ready after {timeout} s; see {self.log_path}")

    def stop(self, keep_dir: Path) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # gunicorn's master: graceful stop of its workers
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this script started for this server
                self.proc.wait()
        self.log.close()
        # The full log holds one line per request (nnserve's access log): keep only its tail.
        tail = self.log_path.read_bytes().splitlines(keepends=True)[-200:]
        (keep_dir / f"{self.name}.log.tail").write_bytes(b"".join(tail))


def decode_outputs(headers: dict, body: bytes) -> dict[str, np.ndarray]:
    length = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
    if length is None:
        doc = json.loads(body)
        return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in doc["outputs"]}
    doc, offset, out = json.loads(body[:int(length)]), int(length), {}
    for o in doc["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(body[offset:offset + size], dtype="<f4").reshape(o["shape"])
            offset += size
    return out


# ---------------------------------------------------------------- wrk

LUA = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
{extra}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def write_script(workdir: Path, model: str, encoding: str) -> tuple[Path, bytes, dict]:
    """wrk's Lua script for an HTTP encoding; for gRPC the body file that h2load sends."""
    x = sample(model)
    if encoding == "grpc":
        body_path = workdir / f"{model}.grpc.body"
        body_path.write_bytes(grpc_h2load.body(model, x))
        return body_path, body_path.read_bytes(), {}
    if encoding == "json":
        body, headers = json_body(x), {"Content-Type": "application/json"}
        extra = ""
    else:
        body, header_length = binary_body(x)
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
        extra = f'wrk.headers["Inference-Header-Content-Length"] = "{header_length}"'
    body_path = workdir / f"{model}.{encoding}.body"
    body_path.write_bytes(body)
    script = workdir / f"{model}.{encoding}.lua"
    script.write_text(LUA.format(body=body_path, content_type=headers["Content-Type"], extra=extra))
    return script, body, headers


def wrk(url: str, script: Path, connections: int, seconds: float, threads: int) -> tuple[dict, str]:
    threads = max(1, min(threads, connections))
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency",
            "--timeout", "10s", "-s", str(script), url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    return json.loads(line[len("BENCH_JSON "):]), result.stdout


GRPC_URL = "http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"
H2LOAD_TIME = re.compile(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)")


def _h2load_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def h2load(port: int, body: Path, connections: int, seconds: float) -> dict:
    """One h2load run of unary ModelInfer calls (one in flight per connection)."""
    argv = ["h2load", "-D", str(max(1, round(seconds))), "-c", str(connections), "-m", "1", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers", GRPC_URL.format(port=port)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                     r"(\d+) timeout", result.stdout)
    wall = re.search(r"finished in ([0-9.]+)s", result.stdout)
    times = H2LOAD_TIME.search(result.stdout)
    if result.returncode != 0 or not (done and wall and times):
        raise RuntimeError(f"h2load failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    total, finished, ok, failed, errored, timeout = map(int, done.groups())
    return {"requests": finished, "ok": ok, "errors": failed + errored + timeout, "duration_s": float(wall.group(1)),
            "max_ms": _h2load_ms(times.group(2)), "mean_ms": _h2load_ms(times.group(3)), "stdout": result.stdout}


def grpc_failures(server: Server) -> float:
    """Calls nnserve answered with a gRPC status other than OK (HTTP/2 says 200 for them all); PyTriton's answers
    are checked once by check_answer."""
    if not server.name.startswith("nnserve"):
        return 0.0
    _, _, text = server.request("GET", "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith("nnserve_grpc_requests_total{") and 'code="OK"' not in line)


def measure_grpc(server: Server, model: str, body: Path, connections: int, seconds: float) -> dict:
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    failed0, cpu0 = grpc_failures(server), tree_cpu_seconds(server.proc.pid)
    stats = h2load(server.grpc_port, body, connections, seconds)
    cpu1, failed1 = tree_cpu_seconds(server.proc.pid), grpc_failures(server)
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests, wall = stats["requests"], stats["duration_s"]
    client_cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {
        "server": server.name, "model": model, "encoding": "grpc", "concurrency": connections,
        "duration_s": wall, "requests": requests, "rps": requests / wall if wall else 0.0,
        "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": stats["max_ms"], "mean_ms": stats["mean_ms"],
        "errors": stats["errors"] + int(failed1 - failed0), "non_2xx": int(failed1 - failed0),
        "socket_errors": stats["errors"],
        "server_cpu_s": cpu1 - cpu0, "cpu_us_per_request": (cpu1 - cpu0) * 1e6 / requests if requests else None,
        "server_cores_busy": (cpu1 - cpu0) / wall if wall else None,
        "wrk_cpu_s": client_cpu, "wrk_cores_busy": client_cpu / wall if wall else None,
        "wrk_stdout": stats["stdout"],
    }


def measure(server: Server, model: str, encoding: str, script: Path, connections: int, seconds: float,
            wrk_threads: int) -> dict:
    if encoding == "grpc":
        return measure_grpc(server, model, script, connections, seconds)
    url = f"http://127.0.0.1:{server.port}/v2/models/{model}/infer"
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped in between
    cpu0 = tree_cpu_seconds(server.proc.pid)
    stats, stdout = wrk(url, script, connections, seconds, wrk_threads)
    cpu1 = tree_cpu_seconds(server.proc.pid)
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = stats["requests"]
    wall = stats["duration_us"] / 1e6
    socket_errors = stats["connect"] + stats["read"] + stats["write"] + stats["timeout"]
    wrk_cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {
        "server": server.name, "model": model, "encoding": encoding, "concurrency": connections,
        "duration_s": wall, "requests": requests, "rps": requests / wall if wall else 0.0,
        "p50_ms": stats["p50_us"] / 1000, "p90_ms": stats["p90_us"] / 1000, "p99_ms": stats["p99_us"] / 1000,
        "max_ms": stats["max_us"] / 1000,
        "errors": stats["status"] + socket_errors, "non_2xx": stats["status"], "socket_errors": socket_errors,
        "server_cpu_s": cpu1 - cpu0, "cpu_us_per_request": (cpu1 - cpu0) * 1e6 / requests if requests else None,
        "server_cores_busy": (cpu1 - cpu0) / wall if wall else None,
        "wrk_cpu_s": wrk_cpu, "wrk_cores_busy": wrk_cpu / wall if wall else None,
        "wrk_stdout": stdout,
    }


def soak(server: Server, script: Path, requests: int, wrk_threads: int) -> dict:
    """RSS of the server's process tree before and after at least `requests` more requests (wrk, c=64)."""
    url = f"http://127.0.0.1:{server.port}/v2/models/digits-mlp/infer"
    before = tree_memory(server.proc.pid)
    done = errors = 0
    while done < requests:
        stats, _ = wrk(url, script, 64, 5, wrk_threads)
        if not stats["requests"]:
            raise RuntimeError("soak: wrk completed no request in 5 s")
        done += stats["requests"]
        errors += stats["status"] + stats["connect"] + stats["read"] + stats["write"] + stats["timeout"]
    after = tree_memory(server.proc.pid)
    return {"requests": done, "errors": errors, "rss_mib_before": before["rss_mib"], "rss_mib_after": after["rss_mib"],
            "rss_growth": after["rss_mib"] / before["rss_mib"] - 1}


TARGETS = [  # (what, model, encoding, concurrency, ratio to the baseline, limit, higher is better)
    ("digits-mlp JSON c=64 requests/s >= 2x baseline", "digits-mlp", "json", 64, "rps", 2.0, True),
    ("digits-mlp JSON c=64 CPU/request <= 1/3 of baseline", "digits-mlp", "json", 64, "cpu_us_per_request", 1 / 3, False),
    ("digits-cnn binary c=64 requests/s >= 2x baseline", "digits-cnn", "binary", 64, "rps", 2.0, True),
]


def check_targets(doc: dict) -> list[dict]:
    """The performance targets, each as a ratio in this run."""
    rows = {(r["server"], r["model"], r["encoding"], r["concurrency"]): r for r in doc["runs"]}
    results = []
    for what, model, encoding, c, figure, limit, higher in TARGETS:
        r = rows.get(("nnserve", model, encoding, c))
        value = None if r is None else r["ratio"].get(figure)
        results.append({"target": what, "value": value,
                        "met": value is not None and (value >= limit if higher else value <= limit)})
    for model in doc["settings"]["models"]:
        for encoding in ("json", "binary"):
            r, base = rows.get(("nnserve", model, encoding, 1)), rows.get(("naive", model, "json", 1))
            if r and base:
                results.append({"target": f"{model} {encoding} c=1 p50 no worse than baseline",
                                "value": r["p50_ms"] / base["p50_ms"], "met": r["p50_ms"] <= base["p50_ms"]})
    for model in ("digits-mlp", "digits-cnn"):
        r, triton = rows.get(("nnserve", model, "grpc", 64)), rows.get(("pytriton", model, "grpc", 64))
        if r and triton:
            results.append({"target": f"{model} gRPC c=64 requests/s >= 1.5x PyTriton's gRPC",
                            "value": r["rps"] / triton["rps"], "met": r["rps"] >= 1.5 * triton["rps"]})
    cnn_json, triton_json = rows.get(("nnserve", "mnist-cnn", "json", 64)), rows.get(("pytriton", "mnist-cnn", "json", 64))
    if cnn_json and triton_json:
        results.append({"target": "mnist-cnn JSON c=64 requests/s >= 2x PyTriton's (its dynamic batcher on)",
                        "value": cnn_json["rps"] / triton_json["rps"], "met": cnn_json["rps"] >= 2 * triton_json["rps"]})
    cnn_binary = rows.get(("nnserve", "mnist-cnn", "binary", 64))
    batch32 = next((f for f in doc["floor"] if f["model"] == "mnist-cnn" and f["ort_threads"] == "1 thread"
                    and f["batch"] == 32), None)
    if cnn_binary and batch32:
        ceiling = doc["machine"]["cpus_available"] * 1e6 / batch32["per_sample_us"]
        results.append({"target": "mnist-cnn binary c=64 requests/s >= 50 % of the batched floor (CPUs x batch-32 "
                        "samples/s)", "value": cnn_binary["rps"] / ceiling, "met": cnn_binary["rps"] >= 0.5 * ceiling})
    for model in [m for m in doc["settings"]["models"] if m in ZOO_MODELS]:
        on, off = rows.get(("nnserve", model, "json", 64)), rows.get(("nnserve-unbatched", model, "json", 64))
        if on and off:
            results.append({"target": f"{model} JSON c=64: the default batching costs at most 3 % against off",
                            "value": on["rps"] / off["rps"], "met": on["rps"] >= 0.97 * off["rps"]})
    nnserve_runs = [r for r in doc["runs"] if r["server"] == "nnserve"]
    errors = sum(r["errors"] for r in doc["runs"])
    results.append({"target": "zero errors in every run", "value": errors, "met": errors == 0 and bool(nnserve_runs)})
    if doc.get("soak"):
        growth = doc["soak"]["rss_growth"]
        results.append({"target": f"RSS growth under 5 % over {doc['soak']['requests']:,} requests",
                        "value": growth, "met": growth < 0.05 and doc["soak"]["errors"] == 0})
    return results


def check_answer(server: Server, model: str, encoding: str, body: bytes, headers: dict) -> dict[str, list]:
    if encoding == "grpc":
        import grpc

        from service.triton import service_pb2

        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                                       response_deserializer=service_pb2.ModelInferResponse.FromString)
            answer = call(body[5:], timeout=30)  # the message without gRPC's 5-byte length prefix
        return {o.name: np.frombuffer(raw, dtype="<f4").reshape(list(o.shape)).tolist()
                for o, raw in zip(answer.outputs, answer.raw_output_contents)}
    status, resp_headers, resp = server.request("POST", f"/v2/models/{model}/infer", body, headers)
    if status != 200:
        raise RuntimeError(f"{server.name} {model} {encoding}: status {status}: {resp[:300]!r}")
    return {k: v.tolist() for k, v in decode_outputs(resp_headers, resp).items()}


# ---------------------------------------------------------------- the run

def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    versions = {}
    for venv, mods in ((".venv", "onnxruntime flask gunicorn numpy"), (".venv-dev", "torch")):
        code = ("import importlib.metadata as m, json; "
                f"print(json.dumps({{k: m.version(k) for k in {mods.split()!r}}}))")
        try:
            out = subprocess.run([str(ROOT / venv / "bin/python"), "-c", code], capture_output=True, text=True,
                                 timeout=60).stdout
            versions[venv] = json.loads(out)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            versions[venv] = None
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    return {"cpu": cpu, "cpus_online": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
            "memory_gib": os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions, "wrk": wrk_version[0].split(" Copyright")[0] if wrk_version else None,
            "git_commit": commit}


def add_ratios(rows: list[dict]) -> None:
    base = {(r["model"], r["concurrency"]): r for r in rows if r["server"] == "naive" and r["encoding"] == "json"}
    for r in rows:
        b = base.get((r["model"], r["concurrency"]))
        r["ratio"] = {k: (r[k] / b[k] if b and b.get(k) and r.get(k) is not None else None)
                      for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")}


def fmt(value, digits=0):
    return "–" if value is None else f"{value:,.{digits}f}"


def ratio(value):
    return "–" if value is None else f"{value:.2f}x"


def grpc_comparison(runs: list[dict]) -> list[dict]:
    """nnserve's gRPC rows with PyTriton's gRPC and nnserve's HTTP binary at the same model and concurrency."""
    rows = {(r["server"], r["model"], r["encoding"], r["concurrency"]): r["rps"] for r in runs}
    out = []
    for (server, model, encoding, c), rps in rows.items():
        if (server, encoding) != ("nnserve", "grpc"):
            continue
        triton, binary = rows.get(("pytriton", model, "grpc", c)), rows.get(("nnserve", model, "binary", c))
        out.append({"model": model, "concurrency": c, "grpc": rps, "pytriton": triton, "binary": binary,
                    "x_pytriton": rps / triton if triton else None, "x_binary": rps / binary if binary else None})
    return out


def write_markdown(path: Path, doc: dict) -> None:
    m = doc["machine"]
    lines = [f"# nnserve benchmark ({doc['started_at']})", "",
             f"Machine: {m['cpu']}, {m['cpus_available']} CPUs available, {m['memory_gib']:.0f} GiB; "
             f"Python {m['python']}; {m['wrk']}; commit {m['git_commit']}.", "",
             f"**wrk runs on the same {m['cpus_available']}-core machine as the server under test**: the client's "
             "CPU (column `wrk cores`) is taken from the server, so absolute figures are for a client and server "
             "sharing the cores; compare servers by the ratios within this run.", "",
             f"Settings: {doc['settings']['duration_s']:g} s per run after a {doc['settings']['warmup_s']:g} s "
             f"warm-up per server/model/encoding, wrk threads = min({doc['settings']['wrk_threads']}, connections), "
             "one sample (batch 1) per request. Ratios are to the naive baseline (JSON) at the same model and "
             "concurrency: requests/s higher is better; latency and CPU lower is better. Errors = non-2xx + "
             "socket errors. CPU µs/request = utime+stime of the server's whole process tree during the run / "
             "requests.", "", "Servers:", ""]
    lines += [f"- **{name}**: {spec}" for name, spec in doc["servers"].items()]
    lines += ["", "## Throughput, latency, CPU", "",
              "| model | server | body | c | req/s | x base | p50 ms | x base | p99 ms | x base | errors "
              "| CPU µs/req | x base | server cores | wrk cores |",
              "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in doc["runs"]:
        q = r["ratio"]
        lines.append(f"| {r['model']} | {r['server']} | {r['encoding']} | {r['concurrency']} | {fmt(r['rps'])} | "
                     f"{ratio(q['rps'])} | {fmt(r['p50_ms'], 2)} | {ratio(q['p50_ms'])} | {fmt(r['p99_ms'], 2)} | "
                     f"{ratio(q['p99_ms'])} | {r['errors']} | {fmt(r['cpu_us_per_request'])} | "
                     f"{ratio(q['cpu_us_per_request'])} | {fmt(r['server_cores_busy'], 2)} | "
                     f"{fmt(r['wrk_cores_busy'], 2)} |")
    grpc_rows = grpc_comparison(doc["runs"])
    if grpc_rows:
        lines += ["", "## gRPC", "", "nnserve's gRPC requests/s against PyTriton's gRPC and against nnserve's own "
                  "HTTP binary path, in this run (h2load for gRPC, wrk for HTTP):", "",
                  "| model | c | nnserve gRPC req/s | PyTriton gRPC req/s | x PyTriton | nnserve HTTP binary req/s "
                  "| gRPC / HTTP binary |", "|---|--:|--:|--:|--:|--:|--:|"]
        for g in grpc_rows:
            lines.append(f"| {g['model']} | {g['concurrency']} | {fmt(g['grpc'])} | {fmt(g['pytriton'])} | "
                         f"{ratio(g['x_pytriton'])} | {fmt(g['binary'])} | {ratio(g['x_binary'])} |")
    lines += ["", "## In-process floor (ONNX Runtime `session.run`, median)", "",
              "| model | ORT threads | batch | median µs | µs per sample |", "|---|---|--:|--:|--:|"]
    for f in doc["floor"]:
        lines.append(f"| {f['model']} | {f['ort_threads']} | {f['batch']} | {f['median_us']:.1f} | "
                     f"{f['per_sample_us']:.2f} |")
    lines += ["", "## Memory (whole process tree: master + workers)", "",
              "| server | models loaded | processes | RSS MiB after ready | PSS MiB after ready | RSS MiB after the runs "
              "| PSS MiB after the runs |", "|---|---|--:|--:|--:|--:|--:|"]
    for name, mem in doc["memory"].items():
        a, b = mem["after_ready"], mem.get("after_runs") or {}
        lines.append(f"| {name} | {mem['models']} | {a['processes']} | {a['rss_mib']:.0f} | {a['pss_mib']:.0f} | "
                     f"{fmt(b.get('rss_mib'))} | {fmt(b.get('pss_mib'))} |")
    lines += ["", "RSS sums every process's resident pages, so pages shared by the forked workers count once per "
              "process; PSS splits shared pages between the processes that map them.", ""]
    if doc.get("soak"):
        k = doc["soak"]
        lines += ["## RSS over a soak", "", f"nnserve's process tree, digits-mlp JSON at c=64: RSS {k['rss_mib_before']:.1f} "
                  f"MiB after the runs above, {k['rss_mib_after']:.1f} MiB after {k['requests']:,} more requests "
                  f"({k['rss_growth']:+.2%}); errors {k['errors']}.", ""]
    if doc.get("targets"):
        lines += ["## Performance targets, in this run", "", "| target | value | met |", "|---|--:|:-:|"]
        for t in doc["targets"]:
            v = t["value"]
            shown = "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
            lines.append(f"| {t['target']} | {shown} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    if doc.get("agreement"):
        lines += ["## Answers agree", "", "Max absolute difference of each server's answer to the benchmark sample "
                  "against nnserve's JSON answer:", "", "| model | server | body | max abs diff |", "|---|---|---|--:|"]
        for a in doc["agreement"]:
            lines.append(f"| {a['model']} | {a['server']} | {a['encoding']} | {a['max_abs_diff']:.2e} |")
        lines.append("")
    if doc.get("failures"):
        lines += ["## Failures", ""] + [f"- {f}" for f in doc["failures"]] + [""]
    lines += ["![requests/s at c=64](chart.png)", ""]
    path.write_text("\n".join(lines))


def write_chart(path: Path, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["runs"] if r["concurrency"] == 64]
    series = []
    for r in rows:
        key = (r["server"], r["encoding"])
        if key not in series:
            series.append(key)
    models = [m for m in doc["settings"]["models"] if any(r["model"] == m for r in rows)]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, key in enumerate(series):
        values = [next((r["rps"] for r in rows if (r["server"], r["encoding"]) == key and r["model"] == m), 0)
                  for m in models]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(models))]
        bars = ax.bar(xs, values, width, label=f"{key[0]} ({key[1]})")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    if not rows:
        ax.text(0.5, 0.5, "no runs at 64 connections", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("requests/s")
    cpus = doc["machine"]["cpus_available"]
    ax.set_title(f"requests/s at 64 connections, batch 1 per request (wrk on the same {cpus}-core machine)")
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 s per run (unless --duration is given)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="seconds of unmeasured load per server/model/encoding before its runs "
                             "(default: a fifth of the duration, at least 1)")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS,
                        help="mnist-cnn is generated (bench/compute_models.py) and served beside the repository's")
    parser.add_argument("--servers", nargs="+", default=["nnserve", "nnserve-unbatched", "naive", "torch", "pytriton"],
                        choices=SERVERS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=CONCURRENCY)
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads, capped at the connections")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/zoo", help="zoo run folders for the torch app")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--soak-requests", type=int, default=100_000,
                        help="requests of the RSS soak after nnserve's runs (0: skip)")
    parser.add_argument("--floor-seconds", type=float, default=1.0, help="timing budget per floor measurement")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else max(1, round(duration / 5))
    if duration < 1 or warmup < 0:
        raise SystemExit("bench: --duration must be at least 1 s and --warmup at least 0 (wrk takes whole seconds)")
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install -y wrk, or `make bench`)")
    if "nnserve" in args.servers and shutil.which("h2load") is None:
        raise SystemExit("bench: h2load drives nnserve's gRPC and is not installed (apt-get install -y "
                         "nghttp2-client, or `make bench`)")
    if "pytriton" in args.servers and not (ROOT / ".venv-pytriton/bin/python").exists():
        raise SystemExit("bench: the pytriton server needs .venv-pytriton (`make bench` makes it; the command is in "
                         "bench/pytriton_app.py)")
    if "torch" in args.servers:
        missing = [m for m in args.models if m in ZOO_MODELS and not (args.runs / m / "summary.json").is_file()]
        if missing:
            raise SystemExit(f"bench: no finished run folder in {args.runs} for {missing}; train them with "
                             f".venv-dev/bin/python -m training zoo --out {args.runs} --only {' '.join(missing)} --quiet")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs"
    log_dir.mkdir(exist_ok=True)

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"bench: wrk shares this machine's {len(os.sched_getaffinity(0))} CPUs with the server under test", flush=True)
    doc: dict = {"started_at": started, "machine": machine(),
                 "settings": {"duration_s": duration, "warmup_s": warmup, "models": args.models,
                              "servers": args.servers, "concurrency": args.concurrency,
                              "wrk_threads": args.wrk_threads, "batch_per_request": 1,
                              "note": "wrk runs on the same machine as the server and competes with it for CPU"},
                 "servers": {}, "floor": [], "runs": [], "memory": {}, "agreement": [], "failures": []}

    generated = Path(tempfile.mkdtemp(prefix="nnserve-bench-models-"))
    if "mnist-cnn" in args.models:  # the repository, with the generated model beside the zoo's
        from bench.compute_models import write_repository

        shutil.copytree(args.repository, generated, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("plots", "*.md", ".publish.lock"))
        args.repository = write_repository(generated)
    print("bench: in-process floor (session.run)", flush=True)
    doc["floor"] = floor(args.models, args.repository, args.floor_seconds)
    for f in doc["floor"]:
        print(f"  {f['model']:<20} ort {f['ort_threads']:<8} batch {f['batch']:>2}: {f['median_us']:8.1f} µs", flush=True)

    answers: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory(prefix="nnserve-bench-") as tmp:
        workdir = Path(tmp)
        specs = server_specs(args.models, args.repository, args.runs, workdir)
        for name in args.servers:
            spec = specs[name]
            doc["servers"][name] = spec["describe"]
            print(f"bench: starting {name}", flush=True)
            server = Server(name, spec, workdir)
            try:
                ready_s = server.wait_ready()
                if spec.get("model_ready"):  # PyTriton says it is ready before its models have loaded
                    for model in spec["models"]:
                        server.wait_model_ready(model)
                    ready_s = time.monotonic() - server.started
                loaded = "all in the repository" if name.startswith("nnserve") else ", ".join(args.models)
                doc["memory"][name] = {"models": loaded, "ready_s": ready_s,
                                       "after_ready": tree_memory(server.proc.pid)}
                print(f"  ready in {ready_s:.1f} s on port {server.port}; "
                      f"RSS {doc['memory'][name]['after_ready']['rss_mib']:.0f} MiB", flush=True)
                for model in [m for m in args.models if m in spec.get("models", args.models)]:
                    for encoding in spec["encodings"]:
                        script, body, headers = write_script(workdir, model, encoding)
                        try:
                            answers[(name, model, encoding)] = check_answer(server, model, encoding, body, headers)
                            if warmup and encoding == "grpc":
                                h2load(server.grpc_port, script, max(args.concurrency), warmup)
                            elif warmup:
                                wrk(f"http://127.0.0.1:{server.port}/v2/models/{model}/infer", script,
                                    max(args.concurrency), warmup, args.wrk_threads)
                        except Exception as exc:  # record and go on with the next model
                            doc["failures"].append(f"{name} {model} {encoding}: {exc}")
                            print(f"  FAILED {name} {model} {encoding}: {exc}", flush=True)
                            continue
                        for c in args.concurrency:
                            row = measure(server, model, encoding, script, c, duration, args.wrk_threads)
                            doc["runs"].append(row)
                            latency = (f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms" if encoding != "grpc"
                                       else f"mean {row['mean_ms']:6.2f} ms  max {row['max_ms']:7.2f} ms")
                            print(f"  {model:<20} {encoding:<6} c={c:<3} {row['rps']:8.0f} req/s  {latency}  "
                                  f"errors {row['errors']}  cpu {fmt(row['cpu_us_per_request'])} µs/req", flush=True)
                doc["memory"][name]["after_runs"] = tree_memory(server.proc.pid)
                if name == "nnserve" and args.soak_requests and "digits-mlp" in args.models:
                    print(f"bench: soak, {args.soak_requests:,} requests to digits-mlp", flush=True)
                    script, _, _ = write_script(workdir, "digits-mlp", "json")
                    doc["soak"] = soak(server, script, args.soak_requests, args.wrk_threads)
                    print(f"  RSS {doc['soak']['rss_mib_before']:.0f} -> {doc['soak']['rss_mib_after']:.0f} MiB "
                          f"({doc['soak']['rss_growth']:+.2%}) over {doc['soak']['requests']:,} requests, "
                          f"errors {doc['soak']['errors']}", flush=True)
            except Exception as exc:
                doc["failures"].append(f"{name}: {exc}")
                print(f"  FAILED {name}: {exc}", flush=True)
            finally:
                server.stop(log_dir)

    for (name, model, encoding), outputs in answers.items():
        reference = answers.get(("nnserve", model, "json"))
        if reference is None or (name, encoding) == ("nnserve", "json"):
            continue
        diffs = [float(np.max(np.abs(np.asarray(outputs[k]) - np.asarray(v)))) for k, v in reference.items()
                 if k in outputs]
        if diffs:
            doc["agreement"].append({"server": name, "model": model, "encoding": encoding,
                                     "max_abs_diff": max(diffs)})

    shutil.rmtree(generated, ignore_errors=True)
    add_ratios(doc["runs"])
    doc["targets"] = check_targets(doc)
    doc["grpc"] = grpc_comparison(doc["runs"])
    order = {s: i for i, s in enumerate(args.servers)}
    doc["runs"].sort(key=lambda r: (args.models.index(r["model"]), r["concurrency"], order[r["server"]],
                                    r["encoding"] != "json"))
    doc["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(args.out / "results.md", doc)
    write_chart(args.out / "chart.png", doc)
    print(f"bench: wrote {args.out / 'results.json'}, results.md, chart.png", flush=True)
    return 1 if doc["failures"] else 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # `python bench/run.py`
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
