"""The model repository extension, hot reload and corrupt versions, on the real server with two workers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import pytest
import tritonclient.http as httpclient

from tests.conftest import CORRUPTIONS, ROOT, SHIPPED_MODELS, publish_copy, start_server, wait_until
from tests.service.test_server import sample_value

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def repo(copy_repo, exported_repo):
    """A private copy of the exported digits-mlp repository (versions 1 and 2)."""
    return copy_repo(exported_repo)


@pytest.fixture
def server(repo, tmp_path):
    srv = start_server(repo, tmp_path, "--workers", "2", "--threads", "4", "--version-policy", "latest:1",
                       env={"NNSERVE_REPOSITORY_TOKEN": TOKEN})
    yield srv
    srv.stop()


class ClientLoop(threading.Thread):
    """Sends inference requests (new connection each, so both workers take some) until stopped."""

    def __init__(self, server, model="digits-mlp", feed=None):
        super().__init__(daemon=True)
        self.server, self.model = server, model
        self.body = json.dumps({"inputs": [feed or {"name": "input", "shape": [1, 64], "datatype": "FP32",
                                                    "data": [1.0] * 64}]}).encode()
        self.versions: list[str] = []
        self.failures: list[tuple[int, bytes]] = []
        self.halt = threading.Event()

    def run(self):
        deadline = time.monotonic() + 240  # bounded even if a test forgets to stop it
        while not self.halt.is_set() and time.monotonic() < deadline:
            status, _, body = self.server.request("POST", f"/v2/models/{self.model}/infer", self.body)
            if status == 200:
                self.versions.append(json.loads(body)["model_version"])
            else:
                self.failures.append((status, body))

    def stop(self):
        self.halt.set()
        self.join(30)


def test_repository_calls_need_the_operators_token(server, exported_repo, tmp_path):
    assert server.json("POST", "/v2/repository/index", raw=b"")[0] == 401
    status, headers, body = server.request("POST", "/v2/repository/index", b"", {"Authorization": "Bearer wrong"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in json.loads(body)["error"]
    status, _, body = server.request("POST", "/v2/repository/index", b"", AUTH)
    assert status == 200
    assert json.loads(body) == [{"name": "digits-mlp", "version": "2", "state": "READY", "reason": ""}]
    tokenless = start_server(exported_repo, tmp_path, "--workers", "1")
    try:
        status, answer = tokenless.json("POST", "/v2/repository/models/digits-mlp/load", {})
        assert status == 403 and "NNSERVE_REPOSITORY_TOKEN" in answer["error"]
    finally:
        tokenless.stop()


def test_load_of_a_new_version_under_load_fails_no_request(server, repo):
    loop = ClientLoop(server)
    loop.start()
    wait_until(lambda: len(loop.versions) >= 10, what="the client's first answers, from version 2")
    version = publish_copy(repo, source_version=2)
    client = httpclient.InferenceServerClient(server.url)
    client.load_model("digits-mlp", headers=AUTH)  # returns once every worker serves it
    answers = [server.json("POST", "/v2/models/digits-mlp/infer", raw=loop.body)[1]["model_version"]
               for _ in range(20)]
    wait_until(lambda: "3" in loop.versions, what="the client to be answered by version 3")
    loop.stop()
    assert version == 3 and set(answers) == {"3"}
    assert loop.failures == [] and "2" in loop.versions and "3" in loop.versions
    assert client.get_model_metadata("digits-mlp")["versions"] == ["3"]  # latest:1 dropped version 2


@pytest.mark.parametrize("damage, reason", CORRUPTIONS, ids=[damage.__name__ for damage, _ in CORRUPTIONS])
def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(server, repo, damage, reason):
    version = publish_copy(repo, source_version=2, damage=damage)
    before = sample_value(server.metrics(), "nnserve_model_load_failures_total", model="digits-mlp")
    loop = ClientLoop(server)
    loop.start()
    status, _, body = server.request("POST", "/v2/repository/models/digits-mlp/load", b"{}", AUTH)
    loop.stop()
    error = json.loads(body)["error"]
    assert status == 400 and f"version {version}" in error and reason in error and "still serving version(s) [2]" in error
    assert loop.failures == [] and set(loop.versions) == {"2"}
    index = json.loads(server.request("POST", "/v2/repository/index", b"", AUTH)[2])
    failed = [e for e in index if e["version"] == str(version)]
    assert failed[0]["state"] == "UNAVAILABLE" and reason in failed[0]["reason"]
    assert sample_value(server.metrics(), "nnserve_model_load_failures_total", model="digits-mlp") > before
    status, answer = server.json("GET", f"/v2/models/digits-mlp/versions/{version}/ready")
    assert status in (404, 503)


def test_unload_then_load(server):
    assert server.request("POST", "/v2/repository/models/digits-mlp/unload",
                          b'{"parameters": {"unload_dependents": false}}', AUTH)[0] == 200
    status, answer = server.json("GET", "/v2/models/digits-mlp/ready")
    assert status == 503 and "unloaded" in answer["error"]
    index = json.loads(server.request("POST", "/v2/repository/index", b"", AUTH)[2])
    assert index == [{"name": "digits-mlp", "state": "UNAVAILABLE", "reason": "unloaded by request"}]
    assert server.request("GET", "/v2/health/ready")[0] == 200  # an unloaded model is not a missing one
    assert server.request("POST", "/v2/repository/models/digits-mlp/load", b"", AUTH)[0] == 200
    for _ in range(10):  # both workers serve it again
        assert server.json("GET", "/v2/models/digits-mlp/ready")[0] == 200
    assert server.json("POST", "/v2/repository/models/nope/load", raw=b"")[0] == 401
    assert server.request("POST", "/v2/repository/models/nope/load", b"", AUTH)[0] == 404


def test_hot_reload_picks_up_a_new_version(repo, tmp_path):
    srv = start_server(repo, tmp_path, "--workers", "2", "--poll-seconds", "0.3")
    try:
        publish_copy(repo, source_version=2)

        def versions_seen():
            return {srv.json("GET", "/v2/models/digits-mlp")[1]["parameters"]["version"] for _ in range(6)}

        assert wait_until(lambda: versions_seen() == {"3"}, timeout=15, what="every worker to serve version 3")
    finally:
        srv.stop()


def test_retrain_publishes_and_the_service_switches_with_no_failed_request(tmp_path):
    """Issue acceptance: `retrain digits-cnn --service URL` while a client keeps sending."""
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copytree(SHIPPED_MODELS / "digits-cnn", repo / "digits-cnn")
    srv = start_server(repo, tmp_path, "--workers", "2", env={"NNSERVE_REPOSITORY_TOKEN": TOKEN})
    feed = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [3.0] * 64}
    loop = ClientLoop(srv, "digits-cnn", feed)
    loop.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "training", "retrain", "digits-cnn", "--models", str(repo),
                               "--service", f"http://{srv.url}", "--quiet", "--out", str(tmp_path / "run")],
                              cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ,
                                                                             "NNSERVE_REPOSITORY_TOKEN": TOKEN})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "published digits-cnn version 2" in proc.stdout and "serves digits-cnn version 2" in proc.stdout
        after = [srv.json("POST", "/v2/models/digits-cnn/infer", {"inputs": [feed]})[1]["model_version"]
                 for _ in range(10)]
    finally:
        loop.stop()
        srv.stop()
    assert set(after) == {"2"}
    assert loop.failures == [] and len(loop.versions) > 10
