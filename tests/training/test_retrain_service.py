"""`retrain --service` checks the service and its token before training, and a load that fails after publishing
says that the version is published."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from service import artifact
from tests.conftest import ROOT, free_port, start_server
from training.retrain import LoadFailed, ServiceRefused, check_service, load_on_service

TOKEN = "retrain-token"


@pytest.fixture(scope="module")
def token_server(exported_repo, tmp_path_factory):
    """The exported repository served with a repository token."""
    srv = start_server(exported_repo, tmp_path_factory.mktemp("logs"), "--workers", "1",
                       env={"NNSERVE_REPOSITORY_TOKEN": TOKEN})
    yield srv
    srv.stop()


def test_retrain_without_a_token_stops_before_training(tmp_path, exported_repo):
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    env = {k: v for k, v in os.environ.items() if k != "NNSERVE_REPOSITORY_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "training", "retrain", "digits-mlp", "--models", str(repo),
                           "--service", f"http://127.0.0.1:{free_port()}", "--quiet", "--out", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "no repository token" in proc.stderr and "nothing was trained or published" in proc.stderr
    assert not (tmp_path / "run").exists() and artifact.list_versions(repo / "digits-mlp") == [1, 2]


def test_check_service_names_each_problem(token_server, exported_repo, tmp_path):
    base = f"http://{token_server.url}"
    assert check_service(base + "/", TOKEN) == base
    with pytest.raises(ServiceRefused, match="the service refused the repository token"):
        check_service(base, "wrong")
    with pytest.raises(ServiceRefused, match=r"cannot reach the service \(.*\); nothing was trained or published"):
        check_service(f"http://127.0.0.1:{free_port()}", TOKEN)
    with pytest.raises(ValueError, match="--service: expected a URL such as http://127.0.0.1:8080"):
        check_service(token_server.url, TOKEN)
    closed = start_server(exported_repo, tmp_path, "--workers", "1", env={"NNSERVE_REPOSITORY_TOKEN": ""})
    try:
        with pytest.raises(ServiceRefused, match="repository extension is off"):
            check_service(f"http://{closed.url}", TOKEN)
    finally:
        closed.stop()


def test_a_failed_load_after_publishing_says_the_version_is_published(token_server):
    """The service reads another repository than the one published into: its load call fails."""
    with pytest.raises(LoadFailed) as info:
        load_on_service(f"http://{token_server.url}", "wine-mlp", 1, TOKEN, log=lambda _m: None)
    message = str(info.value)
    assert message.startswith("wine-mlp version 1 is published, only the load call failed: ")
    assert "answered 404 Request for unknown model" in message and "/v2/repository/models/wine-mlp/load" in message
