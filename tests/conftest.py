"""Shared fixtures: a real (short) training run, a real exported repository, and real server processes."""

from __future__ import annotations

import atexit
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
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shipped_models(root: Path) -> Path:
    """The model repository as git ships it: the tracked files of `root/models`, copied once per test session.

    Users may publish their own models and new versions into models/ (`export --models models`); the tests check the
    repository the project ships, so what a user added there changes nothing they see. Outside a git checkout (an
    unpacked archive, an image) models/ is taken as it is."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--", "models"], capture_output=True,
                                check=True, timeout=30).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return root / "models"
    tracked = [name for name in listed.split("\0") if name and (root / name).is_file()]
    if not tracked:
        return root / "models"
    snapshot = Path(tempfile.mkdtemp(prefix="nnserve-shipped-")) / "models"
    atexit.register(shutil.rmtree, snapshot.parent, True)
    for name in tracked:
        target = snapshot / Path(name).relative_to("models")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return snapshot


SHIPPED_MODELS = shipped_models(ROOT)


def stateless_models(repo: Path) -> list[str]:
    """The models of a repository that answer a request on its own: not the stateful ones (config.pbtxt's
    sequence_batching), whose requests belong to sequences (tests/service/test_sequences.py)."""
    from service import artifact

    return [name for name in artifact.list_models(repo)
            if "sequence_batching" not in ((repo / name / "config.pbtxt").read_text()
                                           if (repo / name / "config.pbtxt").exists() else "")]
FAST_EPOCHS = 8  # enough for > 90 % on digits in about a second


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A digits-mlp run folder from the zoo config, shortened to FAST_EPOCHS."""
    from training.config import apply_overrides, load_config
    from training.trainer import fit

    out = tmp_path_factory.mktemp("run") / "digits-mlp"
    config = apply_overrides(load_config("digits-mlp"), [f"train.epochs={FAST_EPOCHS}"])
    fit(config, out, log=lambda _msg: None)
    return out


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory, trained_run) -> Path:
    """A repository holding the trained run as digits-mlp version 1 and again as version 2."""
    from training.export import export_run
    from training.publish import publish

    repo = tmp_path_factory.mktemp("repo")
    exported, resolved, summary = export_run(trained_run)
    for _ in range(2):
        publish(exported, resolved, summary, "digits-mlp", repo, trained_run)
    return repo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float = 30, what: str = "the condition", interval: float = 0.02):
    """Poll `condition()` until it returns something true, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def send(port: int, method: str, path: str, data: bytes = b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one raw HTTP request to 127.0.0.1:port; the path goes out
    as given (no quoting), for the hostile-input and security tests."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=data if method == "POST" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def worker_pids(pid: int) -> list[int]:
    """A server master's worker processes, from /proc: its children but nginx (the gRPC front end)."""
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(c) for c in (task / "children").read_text().split()}
    return sorted(c for c in children if _comm(c) != "nginx")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # gone
        return ""


@dataclass
class Server:
    """A `python -m service` process on 127.0.0.1."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        """(status, headers (case-insensitive), body) of one HTTP request; never raises on 4xx/5xx."""
        req = urllib.request.Request(f"http://{self.url}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def json(self, method: str, path: str, payload=None, raw: bytes | None = None) -> tuple[int, dict]:
        body = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
        status, _, data = self.request(method, path, body)
        return status, json.loads(data)

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[2].decode()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(repo: Path, log_dir: Path, *args: str, env: dict | None = None, timeout: float = 60) -> Server:
    """Start the real server and wait until /v2/health/ready answers 200. gRPC is off unless `args` give a
    --grpc-port (its default port would be shared, through SO_REUSEPORT, by every test server)."""
    port = free_port()
    if "--grpc-port" not in args:
        args = (*args, "--grpc-port", "0")
    log = log_dir / f"server-{port}.log"
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "wb") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--models", str(repo),
             *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    server = Server(process, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if server.request("GET", "/v2/health/ready")[0] == 200:
                return server
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(exported_repo, tmp_path_factory):
    """One worker serving the exported repository, with a 1 MiB body limit to test 413."""
    srv = start_server(exported_repo, tmp_path_factory.mktemp("logs"), "--workers", "1",
                       "--max-body-bytes", str(1024 * 1024))
    yield srv
    srv.stop()


def publish_copy(repo: Path, model: str = "digits-mlp", source_version: int = 1, damage=None, extra=None) -> int:
    """Publish the next version of `model` with the files of `source_version` (its version renumbered) through the
    real atomic publisher. `damage(files)` corrupts them first, inside the publish, so no reader ever sees a good
    version turn bad; `extra` adds files (e.g. a large one, to widen the publish's write window)."""
    import onnx

    from service import artifact

    src = repo / model / str(source_version)

    def build(version):
        files = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
        files.update(extra or {})
        meta = json.loads(files[artifact.METADATA_FILENAME])
        meta["version"] = version
        graph = onnx.load_from_string(files[artifact.MODEL_FILENAME])
        del graph.metadata_props[:]
        onnx.helper.set_model_props(graph, {artifact.METADATA_PROP: json.dumps(artifact.embedded_view(meta))})
        files[artifact.MODEL_FILENAME] = graph.SerializeToString()
        meta["files"] = artifact.file_entries({k: v for k, v in files.items() if k != artifact.METADATA_FILENAME})
        files[artifact.METADATA_FILENAME] = artifact.dumps(meta).encode()
        if damage:
            damage(files)
        return files

    return artifact.publish_version(repo, model, build)[0]


def answers_while(call, publish, version: str = "2", timeout: float = 30) -> tuple[list[str], list[str]]:
    """Run `call()` (it returns the version that answered) in a loop on a thread; once it has answered, run
    `publish()`, then go on until the last 20 answers came from `version` (at most `timeout` s); return (failures,
    versions answered)."""
    failures, versions, stop = [], [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                versions.append(call())
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures.append(repr(exc))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not (versions or failures) and time.monotonic() < deadline:  # the loop runs before the publish
            time.sleep(0.01)
        publish()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and versions[-20:].count(version) < 20:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    return failures, versions


def truncate_model(files):
    files["model.onnx"] = files["model.onnx"][:len(files["model.onnx"]) // 2]


def break_metadata(files):
    files["metadata.json"] = files["metadata.json"][:40]


def rename_input(files):
    from service import artifact

    meta = json.loads(files["metadata.json"])
    meta["inputs"][0]["name"] = "pixels"
    files["metadata.json"] = artifact.dumps(meta).encode()


# publish_copy(damage=...) corruptions, each with what the refusal's reason says
CORRUPTIONS = [(truncate_model, "expected"), (break_metadata, "not valid JSON"),
               (rename_input, "the graph has ['input']")]


@pytest.fixture
def copy_repo(tmp_path):
    """Copy a repository (default: the shipped one) into tmp_path and return the copy."""

    def _copy(src: Path = SHIPPED_MODELS) -> Path:
        dst = tmp_path / "models"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".publish.lock", ".tmp-*"))
        return dst

    return _copy
