"""The checks of `make test-gpu`, run in .venv-gpu by tests/gpu/run_gpu.py: `python -m tests.gpu.checks NAME --result
FILE`. Each writes {"ok", "reason", "details"} to FILE (details["tables"] become tables in the summary) and exits 0
when ok, else 1."""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
TOKEN = "test-gpu-token"
TRAIN_EPOCHS = 3
BENCH_SECONDS, BENCH_WARMUP, BENCH_CONCURRENCY = 5, 2, [1, 8, 64]


class Failed(Exception):
    """A check that did not hold; the message is the step's reason."""


# ---------------------------------------------------------------- the service, as a subprocess

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`python -m service` on free loopback ports, its output in build/gpu/logs/<label>.log."""

    def __init__(self, label: str, models: Path, device: str, *flags: str, env: dict | None = None,
                 grpc: bool = False, log_dir: Path | None = None):
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.log_path = (log_dir or ROOT / "build" / "gpu" / "logs") / f"{label}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (open while the service runs; stop() closes it)
        argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port), "--grpc-port",
                str(self.grpc_port), "--grpc-frontend", "python", "--models", str(models), "--device", device,
                "--poll-seconds", "0", *flags]
        full_env = {**os.environ, "NNSERVE_REPOSITORY_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}",
                                                            "Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_settled(self, models: list[str], timeout: float = 180) -> tuple[float, dict[str, dict]]:
        """(seconds, the repository index) once every model in `models` has a version READY or UNAVAILABLE (readiness
        stays 503 while a model failed to load, so it cannot be what this waits for)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise Failed(f"the service exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                index = self.index()
            except (OSError, Failed):
                index = {}
            if index and all(index.get(m, {}).get("version") and index[m]["state"] in ("READY", "UNAVAILABLE")
                             for m in models):
                return time.monotonic() - start, index
            time.sleep(0.25)
        raise Failed(f"the models were not loaded or refused after {timeout:.0f} s: {self.log_tail()}")

    def index(self) -> dict[str, dict]:
        status, body = self.request("POST", "/v2/repository/index", b"{}")
        if status != 200:
            raise Failed(f"repository index answered {status}: {body[:200]!r}")
        return {entry["name"]: entry for entry in json.loads(body)}

    def log_tail(self, lines: int = 4) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " / ".join(text[-lines:])[:500]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this check started
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- model inputs and CPU references

def zoo_models() -> list[tuple[str, Path]]:
    from service import artifact

    return [(name, MODELS / name / str(version)) for name in artifact.list_models(MODELS)
            for version in artifact.list_versions(MODELS / name)]


def feeds(version_dir: Path, batches=(1, 7)) -> list[dict]:
    """Deterministic inputs in each dataset's range (as tests/test_shipped_models.py makes them)."""
    import numpy as np

    meta = json.loads((version_dir / "metadata.json").read_text())
    steps = meta.get("task_params", {}).get("window") or 8
    rng = np.random.default_rng(0)
    out = []
    for batch in batches:
        feed = {}
        for spec in meta["inputs"]:
            shape = [batch] + [steps if d == -1 else d for d in spec["shape"][1:]]
            feed[spec["name"]] = (rng.integers(0, 10, shape).astype(np.int64) if spec["datatype"] == "INT64"
                                  else rng.uniform(0, 16, shape).astype(np.float32))
        out.append(feed)
    return out


def tolerance(version_dir: Path) -> float:
    meta = json.loads((version_dir / "metadata.json").read_text())
    return float(meta["export"]["parity"]["atol"])


def scaled_diff(got, want) -> float:
    """max |got - want| / max(1, |want|): the export's parity rule."""
    import numpy as np

    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.size != want.size:
        return float("inf")
    return float(np.max(np.abs(got.reshape(want.shape) - want) / np.maximum(1.0, np.abs(want)), initial=0.0))


def node_assignment(path: Path, providers: list[str]) -> dict[str, int]:
    """Nodes per execution provider for a session on `path` (ONNX Runtime's graph assignment record)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    session = ort.InferenceSession(str(path), options, providers=providers)
    counts: dict[str, int] = {}
    for subgraph in session.get_provider_graph_assignment_info():
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return counts


# ---------------------------------------------------------------- ort-cuda

PROBE = """
import json, sys
import onnxruntime as ort
if sys.argv[1] == "preload":
    ort.preload_dlls()
session = ort.InferenceSession(sys.argv[2], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print(json.dumps({"available": ort.get_available_providers(), "session": session.get_providers()}))
"""


TORCH_PROBE = """
import json, torch
cuda = torch.cuda.is_available()
print(json.dumps({"cuda": cuda, "version": torch.__version__, "cuda_version": torch.version.cuda,
                  "device": torch.cuda.get_device_name(0) if cuda else None,
                  "nccl": torch.distributed.is_nccl_available()}))
"""


def nvidia_lib_dirs() -> list[str]:
    site = Path(__import__("numpy").__file__).resolve().parents[1]  # the venv's site-packages
    return sorted(glob.glob(str(site / "nvidia" / "*" / "lib")) + glob.glob(str(site / "nvidia" / "cu*" / "lib")))


def check_ort_cuda() -> tuple[str, dict]:
    model = str(MODELS / "digits-cnn" / "1" / "model.onnx")
    details: dict = {}
    attempts = {}
    for mode in ("plain", "preload"):
        result = subprocess.run([sys.executable, "-c", PROBE, mode, model], check=False, capture_output=True, text=True,
                                timeout=90)
        attempts[mode] = (json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0
                          else {"error": (result.stderr.strip().splitlines() or ["?"])[-1][:300]})
    details["attempts"] = attempts
    torch_probe = subprocess.run([sys.executable, "-c", TORCH_PROBE], check=False, capture_output=True, text=True,
                                 timeout=120)
    details["torch"] = (json.loads(torch_probe.stdout.strip().splitlines()[-1]) if torch_probe.returncode == 0
                        else {"error": torch_probe.stderr.strip()[-300:]})
    problems = []
    plain = attempts["plain"]
    if CUDA not in plain.get("available", []):
        problems.append(f"onnxruntime offers {plain.get('available') or plain.get('error')}, no {CUDA}")
    elif CUDA not in plain.get("session", []):
        preload = attempts["preload"]
        if CUDA in preload.get("session", []):
            lib_dirs = nvidia_lib_dirs()
            details["service_env"] = {"LD_LIBRARY_PATH": ":".join(lib_dirs + [os.environ.get("LD_LIBRARY_PATH", "")])}
            problems.append(f"a session gets {CUDA} only after onnxruntime.preload_dlls() (the service does not call "
                            f"it): the later steps run with LD_LIBRARY_PATH set to the {len(lib_dirs)} nvidia/*/lib "
                            "folders of .venv-gpu")
        else:
            problems.append(f"a session on digits-cnn gets {plain.get('session')}, also after preload_dlls() "
                            f"({preload.get('session') or preload.get('error')})")
    if not details["torch"].get("cuda"):
        problems.append(f"torch does not see a GPU ({details['torch']})")
    elif not details["torch"].get("nccl"):
        problems.append("torch has no NCCL")
    if problems:
        raise _FailedWith("; ".join(problems), details)
    return (f"onnxruntime session providers {plain['session']}; torch {details['torch']['version']} on "
            f"{details['torch']['device']} (CUDA {details['torch']['cuda_version']})"), details


class _FailedWith(Failed):
    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


# ---------------------------------------------------------------- serve

def infer_http(client, model: str, feed: dict, outputs: list[str]) -> dict:
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, value in feed.items():
        tensor = httpclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(o, binary_data=True)
                                                  for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def infer_grpc(client, model: str, feed: dict, outputs: list[str]) -> dict:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, value in feed.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def check_serve() -> tuple[str, dict]:
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from service.runtime import load_model

    models = zoo_models()
    rows, problems = [], []
    service = Service("serve-cuda", MODELS, "cuda", "--workers", "2", grpc=True)
    try:
        ready_s, index = service.wait_settled([name for name, _ in models])
        http_client = httpclient.InferenceServerClient(f"127.0.0.1:{service.port}", network_timeout=60)
        grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{service.grpc_port}")
        for name, version_dir in models:
            row = {"model": name, "state": index.get(name, {}).get("state", "?")}
            rows.append(row)
            try:
                if row["state"] != "READY":
                    raise Failed(f"not READY: {index.get(name, {}).get('reason', 'not in the index')}")
                metadata = http_client.get_model_metadata(name)
                row["provider"] = metadata.get("parameters", {}).get("provider")
                loaded = load_model(version_dir, device="cuda")  # in-process, as a worker loads it
                row["get_providers"] = ",".join(p.replace("ExecutionProvider", "") for p in loaded.session.get_providers())
                nodes = node_assignment(version_dir / "model.onnx", [CUDA, CPU])
                row["nodes"] = ", ".join(f"{k.replace('ExecutionProvider', '')} {v}" for k, v in sorted(nodes.items()))
                cpu = ort.InferenceSession(str(version_dir / "model.onnx"), providers=[CPU])
                outputs = [o.name for o in cpu.get_outputs()]
                atol = tolerance(version_dir)
                worst = {"http": 0.0, "grpc": 0.0}
                for feed in feeds(version_dir):
                    want = dict(zip(outputs, cpu.run(outputs, feed)))
                    for protocol, infer, client in (("http", infer_http, http_client), ("grpc", infer_grpc, grpc_client)):
                        got = infer(client, name, feed, outputs)
                        worst[protocol] = max(worst[protocol], *(scaled_diff(got[o], want[o]) for o in outputs))
                row.update(atol=atol, http_diff=f"{worst['http']:.2e}", grpc_diff=f"{worst['grpc']:.2e}")
                wrong = []
                if row["provider"] != CUDA:
                    wrong.append(f"model metadata says provider {row['provider']}")
                if CUDA not in loaded.session.get_providers():
                    wrong.append(f"get_providers() is {loaded.session.get_providers()}")
                if not nodes.get(CUDA):
                    wrong.append(f"no node runs on CUDA ({row['nodes']})")
                if max(worst.values()) > atol:
                    wrong.append(f"answers differ from CPU ONNX Runtime by {max(worst.values()):.2e} > {atol:g}")
                if wrong:
                    raise Failed("; ".join(wrong))
                row["ok"] = "yes"
            except Exception as exc:  # noqa: BLE001 (record and go on with the next model)
                row["ok"] = "NO"
                problems.append(f"{name}: {str(exc)[:300]}")
    finally:
        service.stop()
    details = {"ready_s": round(ready_s, 1) if "ready_s" in locals() else None, "tables": {"zoo models": rows}}
    if problems:
        raise _FailedWith("; ".join(problems), details)
    return (f"{len(models)} zoo models on {CUDA} (metadata, get_providers(), nodes); HTTP and gRPC answers within "
            f"the export tolerance of CPU ONNX Runtime; ready in {ready_s:.1f} s"), details


# ---------------------------------------------------------------- refuse

def write_cpu_only_model(path: Path) -> None:
    """A model whose only node (ai.onnx.ml Normalizer) has no CUDA kernel: its session runs wholly on the CPU."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm="L2")], "cpu_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def check_refuse() -> tuple[str, dict]:
    repo = Path(tempfile.mkdtemp(prefix="nnserve-gpu-refuse-"))
    rows, problems = [], []
    try:
        shutil.copytree(MODELS / "digits-cnn", repo / "digits-cnn", ignore=shutil.ignore_patterns("plots", "*.md"))
        write_cpu_only_model(repo / "cpu-only-op" / "1" / "model.onnx")
        nodes = node_assignment(repo / "cpu-only-op" / "1" / "model.onnx", [CUDA, CPU])
        cases = [  # (case, env, model, expected state)
            ("a model with no CUDA node", {}, {"digits-cnn": "READY", "cpu-only-op": "UNAVAILABLE"}),
            ("the GPU hidden (CUDA_VISIBLE_DEVICES='')", {"CUDA_VISIBLE_DEVICES": ""},
             {"digits-cnn": "UNAVAILABLE", "cpu-only-op": "UNAVAILABLE"}),
        ]
        for case, env, expected in cases:
            service = Service("refuse-" + ("hidden" if env else "cpu-only-op"), repo, "cuda", "--workers", "1", env=env)
            try:
                try:
                    _, index = service.wait_settled(list(expected), timeout=120)
                except Failed as exc:
                    if service.proc.poll() is None or "UNAVAILABLE" not in set(expected.values()):
                        raise
                    index = {m: {"state": "UNAVAILABLE", "reason": f"the service refused to start: {exc}"}
                             for m in expected}
                for model, want in expected.items():
                    got = index.get(model, {})
                    row = {"case": case, "model": model, "expected": want, "state": got.get("state", "?"),
                           "reason": got.get("reason", "")[:200]}
                    rows.append(row)
                    if got.get("state") != want:
                        note = (f" (its nodes: {nodes}; the service checks session.get_providers(), which lists the "
                                "providers registered, not where nodes run)" if model == "cpu-only-op" else "")
                        problems.append(f"{case}: {model} is {got.get('state')}, expected {want}{note}")
            finally:
                service.stop()
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    details = {"cpu_only_op_nodes": nodes, "tables": {"refusals": rows}}
    if problems:
        raise _FailedWith("; ".join(problems), details)
    return "--device cuda refused the model with no CUDA node and every model with the GPU hidden", details


# ---------------------------------------------------------------- train

def check_train() -> tuple[str, dict]:
    out = ROOT / "build" / "gpu" / "runs" / "digits-cnn-ddp"
    shutil.rmtree(out, ignore_errors=True)
    probe = ROOT / "build" / "gpu" / "train-probe.json"
    probe.unlink(missing_ok=True)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    argv = [torchrun, "--nproc_per_node=1", "--master_port", str(free_port()), "-m", "tests.gpu.fit_probe",
            str(probe), "fit", "digits-cnn", "--epochs", str(TRAIN_EPOCHS), "--out", str(out), "--quiet"]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, check=False, capture_output=True, text=True, timeout=200)
    log = ROOT / "build" / "gpu" / "logs" / "train-torchrun.log"
    log.write_text("$ " + " ".join(argv) + "\n" + result.stdout + result.stderr)
    seconds = time.monotonic() - started
    record = json.loads(probe.read_text()) if probe.is_file() else {}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").is_file() else []
    details = {"probe": record, "seconds": round(seconds, 1), "exit_code": result.returncode,
               "tables": {"epochs": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}
                                     for r in rows]}}
    problems = []
    if result.returncode:
        problems.append(f"torchrun exited {result.returncode}: {(result.stderr.strip().splitlines() or [''])[-1][:300]}")
    group = record.get("process_group") or {}
    if group.get("backend") != "nccl" or not str(group.get("device", "")).startswith("cuda"):
        problems.append(f"process group {group or 'not joined'}, expected nccl on cuda")
    optimizers = record.get("optimizers") or []
    if not optimizers or not all(o["fused"] and all(d.startswith("cuda") for d in o["devices"]) for o in optimizers):
        problems.append(f"optimizer {optimizers or 'not made'}, expected torch's fused kernel on cuda parameters")
    if len(rows) != TRAIN_EPOCHS or not all(r.get("train_loss") == r.get("train_loss") for r in rows):
        problems.append(f"metrics.jsonl holds {len(rows)} epochs, expected {TRAIN_EPOCHS} with finite losses")
    if not (out / "last.pt").is_file():
        problems.append("no last.pt checkpoint")
    if problems:
        raise _FailedWith("; ".join(problems), details)
    return (f"digits-cnn, {TRAIN_EPOCHS} epochs under torchrun --nproc_per_node=1 in {seconds:.1f} s: "
            f"{group['backend']} on {group['device']}, {optimizers[0]['class']}(fused=True), "
            f"val_loss {rows[-1].get('val_loss', float('nan')):.4f}"), details


# ---------------------------------------------------------------- bench

def python_load(port: int, model: str, body: bytes, headers: dict, connections: int, seconds: float) -> dict:
    """A bounded load without wrk: one keep-alive connection per thread, for `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = []
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            mine.append(time.perf_counter() - t0) if ok else None
            if not ok:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (lambda q: None)
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "errors": errors[0]}


def check_bench() -> tuple[str, dict]:
    from bench import run as bench

    repo = Path(tempfile.mkdtemp(prefix="nnserve-gpu-bench-"))
    workdir = Path(tempfile.mkdtemp(prefix="nnserve-gpu-bench-work-"))
    log_dir = ROOT / "build" / "gpu" / "logs"
    shutil.copytree(MODELS / "digits-cnn", repo / "digits-cnn", ignore=shutil.ignore_patterns("plots", "*.md"))
    model = "digits-cnn"
    driver = "wrk" if shutil.which("wrk") else "python threads (wrk not installed)"
    rows, problems, answers = [], [], {}
    try:
        for device in ("cpu", "cuda"):
            spec = {"argv": lambda port, grpc_port, device=device: [
                        sys.executable, "-m", "service", "--models", str(repo), "--port", str(port), "--grpc-port", "0",
                        "--device", device, "--poll-seconds", "0"],
                    "env": {}, "encodings": ["binary"]}
            server = bench.Server(f"bench-{device}", spec, log_dir)
            try:
                server.wait_ready(timeout=90)
                status, body = server.request("GET", f"/v2/models/{model}")[::2]
                provider = json.loads(body).get("parameters", {}).get("provider") if status == 200 else None
                script, body, headers = bench.write_script(workdir, model, "binary")
                answers[device] = bench.check_answer(server, model, "binary", body, headers)
                if driver == "wrk":
                    bench.wrk(f"http://127.0.0.1:{server.port}/v2/models/{model}/infer", script,
                              max(BENCH_CONCURRENCY), BENCH_WARMUP, 2)
                else:
                    python_load(server.port, model, body, headers, max(BENCH_CONCURRENCY), BENCH_WARMUP)
                for c in BENCH_CONCURRENCY:
                    if driver == "wrk":
                        row = bench.measure(server, model, "binary", script, c, BENCH_SECONDS, 2)
                    else:
                        row = python_load(server.port, model, body, headers, c, BENCH_SECONDS)
                    rows.append({"device": device, "provider": provider, "concurrency": c,
                                 "requests/s": round(row["rps"]), "p50 ms": _round(row["p50_ms"]),
                                 "p99 ms": _round(row["p99_ms"]), "errors": row["errors"]})
                    if row["errors"] or not row["requests"]:
                        problems.append(f"{device} c={c}: {row['errors']} errors, {row['requests']} requests")
                if provider != {"cpu": CPU, "cuda": CUDA}[device]:
                    problems.append(f"--device {device} served digits-cnn on {provider}")
            except Exception as exc:  # noqa: BLE001 (record and go on with the other device)
                problems.append(f"{device}: {str(exc)[:300]}")
            finally:
                server.stop(log_dir)
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    for row in rows:
        other = next((r for r in rows if r["device"] == "cpu" and r["concurrency"] == row["concurrency"]), None)
        row["cuda/cpu"] = (f"{row['requests/s'] / other['requests/s']:.2f}x" if row["device"] == "cuda" and other
                           and other["requests/s"] else "")
    if len(answers) == 2:
        diff = max(scaled_diff(answers["cuda"][k], answers["cpu"][k]) for k in answers["cpu"])
        if diff > tolerance(MODELS / model / "1"):
            problems.append(f"the CUDA answer differs from the CPU one by {diff:.2e}")
    details = {"driver": driver, "seconds_per_run": BENCH_SECONDS, "warmup_s": BENCH_WARMUP,
               "flags": "python -m service --device cpu|cuda, its defaults otherwise (one worker per CPU)",
               "tables": {f"digits-cnn binary, {BENCH_SECONDS} s per run, {driver}": rows}}
    if problems:
        raise _FailedWith("; ".join(problems), details)
    best = {d: max((r["requests/s"] for r in rows if r["device"] == d), default=0) for d in ("cpu", "cuda")}
    return (f"digits-cnn binary c={'/'.join(map(str, BENCH_CONCURRENCY))}: best {best['cpu']} req/s on CPU, "
            f"{best['cuda']} on CUDA ({driver})"), details


def _round(value):
    return None if value is None else round(value, 2)


# ---------------------------------------------------------------- main

CHECKS = {"ort-cuda": check_ort_cuda, "serve": check_serve, "refuse": check_refuse, "train": check_train,
          "bench": check_bench}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu.checks")
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        reason, details = CHECKS[args.check]()
        verdict = {"ok": True, "reason": reason, "details": details}
    except Exception as exc:  # noqa: BLE001 (any error is the check's verdict)
        verdict = {"ok": False, "reason": f"{type(exc).__name__}: {exc}" if not isinstance(exc, Failed) else str(exc),
                   "details": getattr(exc, "details", {})}
    verdict["seconds"] = round(time.monotonic() - started, 1)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(verdict, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in verdict.items() if k != "details"}), flush=True)
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
