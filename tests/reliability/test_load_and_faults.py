"""Load, hot reload, worker kills, SIGTERM and a soak, on the real server driven by wrk.

Marker `reliability` (`make test-reliability`, about 6 minutes for both servers). Every test writes its figures to
build/reliability/<test>.json and prints them; the README's reliability table quotes one run of these.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bench.run import tree_memory
from tests.conftest import (CORRUPTIONS, ROOT, SHIPPED_MODELS, publish_copy, start_server, stateless_models, wait_until,
                            worker_pids)
from tests.service.test_server import sample_value

pytestmark = pytest.mark.reliability

REPORT_DIR = ROOT / "build" / "reliability"
TOKEN = "reliability-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONNECTIONS = 64
SERVERS = ["granian", "gunicorn"]

# One wrk script for every test: each thread cycles through the requests of a manifest (one "path<TAB>body file"
# per line) and prints its summary as one JSON line.
LUA = r"""
local manifest = "{manifest}"
local requests, i = {{}}, 0
for line in io.lines(manifest) do
  local path, file = line:match("([^\t]+)\t(.+)")
  local f = assert(io.open(file, "rb"))
  table.insert(requests, wrk.format("POST", path, {{["Content-Type"] = "application/json"}}, f:read("*a")))
  f:close()
end
function init(args)
  i = math.random(#requests)  -- threads start at different models
end
function request()
  i = i % #requests + 1
  return requests[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests": %d, "duration_s": %f, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_ms": %f, "p90_ms": %f, "p99_ms": %f, "max_ms": %f}}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def sample_request(meta: dict) -> dict:
    """A valid V2 request for a model, from its metadata: batch 1, a window of its task for sequences."""
    window = int(meta.get("task_params", {}).get("window", 8))
    inputs = []
    for spec in meta["inputs"]:
        shape = [1] + [window if d == -1 else d for d in spec["shape"][1:]]
        count = math.prod(shape)
        if spec["datatype"] == "BYTES":  # a text model's sentence
            data = ["the quick brown fox jumps over the lazy dog"] * count
        else:
            data = [3] * count if spec["datatype"] == "INT64" else [float((k * 7) % 17) for k in range(count)]
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data})
    return {"inputs": inputs}


class Load:
    """wrk against the server, in the background: 64 connections cycling over the given models."""

    def __init__(self, server, workdir: Path, models: list[str], seconds: float, threads: int = 2):
        workdir.mkdir(parents=True, exist_ok=True)
        lines = []
        for model in models:
            first = min((server.repo / model).glob("*/metadata.json"), key=lambda p: int(p.parent.name))
            meta = json.loads(first.read_text())
            body = workdir / f"{model}.json"
            body.write_text(json.dumps(sample_request(meta)))
            lines.append(f"/v2/models/{model}/infer\t{body}")
        manifest = workdir / "manifest.tsv"
        manifest.write_text("\n".join(lines) + "\n")
        script = workdir / "load.lua"
        script.write_text(LUA.format(manifest=manifest))
        self.proc = subprocess.Popen(
            ["wrk", "-t", str(threads), "-c", str(CONNECTIONS), "-d", f"{int(seconds)}s", "--timeout", "10s",
             "-s", str(script), f"http://{server.url}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float = 300) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        line = next((l for l in out.splitlines() if l.startswith("WRK_JSON ")), None)
        assert line is not None, f"wrk failed ({self.proc.returncode}): {out}\n{err}"
        stats = json.loads(line[len("WRK_JSON "):])
        stats["socket_errors"] = stats["connect"] + stats["read"] + stats["write"] + stats["timeout"]
        stats["errors"] = stats["socket_errors"] + stats["status"]
        stats["rps"] = stats["requests"] / stats["duration_s"]
        return stats


def report(name: str, figures: dict) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(figures)}")


def tracebacks(server) -> list[str]:
    return [line for line in server.log.read_text(errors="replace").splitlines() if "Traceback" in line]


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds open (as /proc/net/tcp names them)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections_of(pid: int, port: int) -> dict:
    """The TCP connections to `port` that process `pid` holds: established ones (each carries at most one wrk
    request) and those still queued on its own listening socket (granian's workers listen with SO_REUSEPORT)."""
    inodes = socket_inodes(pid)
    established = queued = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) != port or fields[9] not in inodes:
                continue
            if fields[3] == "01":  # ESTABLISHED
                established += 1
            elif fields[3] == "0A":  # LISTEN: rx_queue is the accept queue's length
                queued += int(fields[4].split(":")[1], 16)
    return {"established": established, "queued": queued}


@pytest.fixture
def repo(copy_repo):
    return copy_repo()


def serve(kind: str, repo: Path, log_dir: Path, *args: str):
    srv = start_server(repo, log_dir, "--server", kind, "--workers", "2", "--poll-seconds", "1", *args,
                       env={"NNSERVE_REPOSITORY_TOKEN": TOKEN})
    srv.repo, srv.kind = repo, kind
    return srv


@pytest.fixture(params=SERVERS)
def server(request, repo, tmp_path):
    srv = serve(request.param, repo, tmp_path)
    yield srv
    srv.stop()


ALL_MODELS = sorted(stateless_models(SHIPPED_MODELS))  # a stateful stream's requests belong to sequences


def test_64_connections_for_60_seconds_across_all_models(server, tmp_path):
    load = Load(server, tmp_path / "wrk", ALL_MODELS, seconds=60)
    stats = load.result()
    metrics = server.metrics()
    answered = {m: sample_value(metrics, "nnserve_inference_requests_total", model=m, version="1",
                                outcome="success") for m in ALL_MODELS}
    report(f"load-{server.kind}", {**stats, "models": len(ALL_MODELS), "connections": CONNECTIONS,
                                   "answered_per_model": answered})
    assert stats["errors"] == 0 and stats["requests"] > 1000, stats
    assert all(n > 0 for n in answered.values()), answered
    assert tracebacks(server) == []


def index(server) -> list[dict]:
    return json.loads(server.request("POST", "/v2/repository/index", b"", AUTH)[2])


def wait_for(predicate, timeout: float = 30, what: str = ""):
    return wait_until(predicate, timeout, what, interval=0.2)


def wait_for_load(server, requests: int = 200) -> None:
    """Wait until the server has answered `requests` more inference requests: wrk is connected and busy."""
    def answered() -> float:
        return sample_value(server.metrics(), "nnserve_inference_requests_total", outcome="success")

    before = answered()
    wait_for(lambda: answered() >= before + requests, what=f"{requests} requests of the load answered")


def accepted(server, client_ports: set[int]) -> bool:
    """True when a worker process holds the server side of every connection from `client_ports`."""
    inodes = set().union(*(socket_inodes(pid) for pid in worker_pids(server.process.pid)))
    held = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if local == server.port and remote in client_ports and fields[3] == "01" and fields[9] in inodes:
                held.add(remote)
    return held == client_ports


def test_hot_reload_under_load(server, tmp_path):
    """A good version goes live and three corrupt ones are refused while wrk runs: no request fails."""
    load = Load(server, tmp_path / "wrk", ["digits-mlp", "digits-cnn", "co2-lstm"], seconds=25)
    wait_for_load(server)
    good = publish_copy(server.repo, "digits-mlp")  # picked up by the watcher (poll every second), no call
    wait_for(lambda: server.json("GET", "/v2/models/digits-mlp")[1].get("versions") == ["1", str(good)],
             what="the watcher to serve the new version")
    refused = {}
    request = sample_request(json.loads((server.repo / "digits-mlp/1/metadata.json").read_text()))
    for damage, reason in CORRUPTIONS:
        version = publish_copy(server.repo, "digits-mlp", damage=damage)
        entry = wait_for(lambda: next((e for e in index(server) if e.get("version") == str(version)
                                       and e["state"] == "UNAVAILABLE"), None), what=f"version {version} refused")
        assert reason in entry["reason"], entry
        refused[damage.__name__] = entry["reason"]
        status, answer = server.json("POST", "/v2/models/digits-mlp/infer", request)
        assert status == 200 and answer["model_version"] == str(good), answer
    # Each of the two workers refuses each bad version on its own rescan: the metric (summed) reaches 6.
    def refusals():
        count = sample_value(server.metrics(), "nnserve_model_load_failures_total", model="digits-mlp")
        return count if count >= 6 else None

    failures = wait_for(refusals, what="both workers to count the three refusals")
    stats = load.result()
    served_new = sample_value(server.metrics(), "nnserve_inference_requests_total", model="digits-mlp",
                              version=str(good), outcome="success")
    report(f"hot-reload-{server.kind}", {**stats, "new_version": good, "requests_on_new_version": served_new,
                                         "refused": refused, "load_failures_metric": failures})
    assert stats["errors"] == 0 and served_new > 0, stats
    assert tracebacks(server) == []


def test_kill_9_one_worker_under_load(server, tmp_path):
    """The server starts a new worker; only the requests on the killed worker's connections may fail."""
    load = Load(server, tmp_path / "wrk", ALL_MODELS, seconds=20)
    wait_for_load(server)
    before = worker_pids(server.process.pid)
    wait_for(lambda: sum(connections_of(pid, server.port)["established"] for pid in before) == CONNECTIONS,
             what=f"all {CONNECTIONS} connections of the load accepted")
    held_by = {pid: connections_of(pid, server.port) for pid in before}
    victim = max(before, key=lambda pid: held_by[pid]["established"])  # gthread may hold them all in one worker
    held = held_by.pop(victim)
    others = list(held_by.values())
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip() == "1"
    os.kill(victim, signal.SIGKILL)

    def replacement():
        now = worker_pids(server.process.pid)
        return now if len(now) == 2 and victim not in now else None

    replaced = wait_for(replacement, what="a new worker")
    stats = load.result()
    after = Load(server, tmp_path / "wrk-after", ALL_MODELS, seconds=5).result()  # the new worker serves
    report(f"kill-9-{server.kind}", {**stats, "killed_worker_connections": held, "tcp_migrate_req": migrate,
                                     "other_workers_connections": others,
                                     "workers_before": before, "workers_after": replaced, "after": after})
    assert 0 < held["established"] <= CONNECTIONS
    if server.kind == "granian" and not migrate:
        # Granian's workers listen on sockets of their own (SO_REUSEPORT): without tcp_migrate_req, connections the
        # kernel queued on the dead worker's socket before its replacement started are reset too. wrk reopens a
        # connection at most once per failure in that window, so at most as many again.
        assert stats["errors"] <= 2 * (held["established"] + held["queued"]), stats
    else:
        assert stats["errors"] <= held["established"] + held["queued"], stats
    assert after["errors"] == 0 and after["requests"] > 0, after


@pytest.mark.parametrize("kind", SERVERS)
def test_sigterm_under_load_fails_no_request_in_flight(kind, repo, tmp_path):
    """SIGTERM while wrk runs and slow requests are in flight: every request the server took up is answered
    (its access log counts what it handled; wrk counts what it received), then the server exits 0."""
    server = serve(kind, repo, tmp_path, "--access-log")
    load = Load(server, tmp_path / "wrk", ["digits-mlp", "digits-cnn"], seconds=15)
    wait_for_load(server)
    # A batch of 256 long sequences: each such request takes a good part of a second under this load.
    body = json.dumps({"inputs": [{"name": "input", "shape": [256, 64, 8], "datatype": "FP32",
                                   "data": [float(k % 17) for k in range(256 * 64 * 8)]}]}).encode()
    results: list = []
    sent: list[int] = []  # the local port of each probe whose request went out whole

    def probe():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        started = time.monotonic()
        try:
            conn.request("POST", "/v2/models/digits-transformer/infer", body,
                         {"Content-Type": "application/json"})
            sent.append(conn.sock.getsockname()[1])
            response = conn.getresponse()
            response.read()
            results.append((response.status, time.monotonic() - started))
        except Exception as err:  # noqa: BLE001 - any failure is what this test counts
            results.append((repr(err), time.monotonic() - started))
        finally:
            conn.close()

    probes = [threading.Thread(target=probe) for _ in range(8)]
    try:
        for t in probes:
            t.start()
        wait_until(lambda: len(sent) == 8 and accepted(server, set(sent)),
                   what="the 8 slow requests sent whole and accepted by the workers")
        in_flight = sample_value(server.metrics(), "nnserve_inference_requests_in_flight")
        server.process.send_signal(signal.SIGTERM)
        for t in probes:
            t.join(90)
        code = server.process.wait(60)
        stats = load.result()
    finally:
        server.stop()
    handled = 0
    for line in server.log.read_text(errors="replace").splitlines():
        if '"route":"/v2/models/<name>/infer"' in line and '"model":"digits-' in line \
                and '"model":"digits-transformer"' not in line:
            handled += 1
    report(f"sigterm-{kind}", {"probes": [r[0] for r in results], "probe_seconds": [r[1] for r in results],
                               "in_flight_at_sigterm": in_flight, "exit_code": code,
                               "wrk_requests_handled_by_the_server": handled, "wrk": stats})
    assert [r[0] for r in results] == [200] * 8, results
    assert code == 0
    # wrk's errors after the SIGTERM are requests on connections the server was closing or refusing, which it never
    # took up: everything it did take up reached wrk.
    assert handled == stats["requests"] and handled > 0, (handled, stats)
    assert tracebacks(server) == []


def test_soak_100000_requests_rss_growth_under_5_percent(server, tmp_path):
    Load(server, tmp_path / "warm", ALL_MODELS, seconds=5).result()  # warm-up: arenas, caches, thread pools
    before = tree_memory(server.process.pid)
    totals = {"requests": 0, "errors": 0, "duration_s": 0.0, "p99_ms": 0.0, "runs": 0}
    while totals["requests"] < 100_000:  # wrk runs for a duration, so in 10 s runs until 100,000 are answered
        stats = Load(server, tmp_path / "soak", ALL_MODELS, seconds=10).result()
        assert stats["requests"] > 0, stats
        for key in ("requests", "errors", "duration_s"):
            totals[key] += stats[key]
        totals["p99_ms"] = max(totals["p99_ms"], stats["p99_ms"])
        totals["runs"] += 1
    after = tree_memory(server.process.pid)
    growth = after["rss_mib"] / before["rss_mib"] - 1
    report(f"soak-{server.kind}", {**totals, "rss_mib_before": before["rss_mib"], "rss_mib_after": after["rss_mib"],
                                   "rss_growth": growth, "processes": after["processes"]})
    assert totals["errors"] == 0, totals
    assert growth < 0.05, (before, after)
    assert after["processes"] == 3  # no worker was replaced along the way
