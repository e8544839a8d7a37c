"""Settings from the environment and flags, CPU-sized thread pools, and readiness before models are loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from service.app import create_app
from service.settings import Settings
from tests.conftest import ROOT, SHIPPED_MODELS, free_port


@pytest.mark.parametrize("policy, latest", [("all", None), ("latest", 1), ("latest:3", 3)])
def test_version_policies(policy, latest):
    assert Settings(version_policy=policy).parse_version_policy() == latest


@pytest.mark.parametrize("env, fragment", [
    ({"NNSERVE_PORT": "http"}, "NNSERVE_PORT: expected an integer, got 'http'"),
    ({"NNSERVE_VERSION_POLICY": "newest"}, "version_policy: expected 'all', 'latest' or 'latest:N'"),
    ({"NNSERVE_DEVICE": "tpu"}, "device: expected one of ['auto', 'cpu', 'cuda']"),
    ({"NNSERVE_POLL_SECONDS": "soon"}, "NNSERVE_POLL_SECONDS: expected a number"),
])
def test_bad_settings_name_the_setting(env, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        Settings.from_env(env)


def test_flags_win_over_the_environment():
    settings = Settings.from_env({"NNSERVE_PORT": "9000", "NNSERVE_THREADS": "2"}, port=9100)
    assert settings.port == 9100 and settings.threads == 2


def test_threads_follow_the_cpus_the_process_may_use():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from service.settings import Settings, available_cpus; "
            "print(available_cpus(), Settings(workers=1).session_threads, Settings(workers=1, ort_threads=3).session_threads)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1", "3"]


def test_readiness_is_503_until_every_model_is_loaded_and_warmed_up():
    app = create_app(Settings(models=SHIPPED_MODELS))  # ten models load in a background thread
    client = app.test_client()
    seen = [client.get("/v2/health/ready").status_code]
    assert client.get("/v2/health/live").status_code == 200  # alive at once
    deadline = time.monotonic() + 60
    while seen[-1] != 200 and time.monotonic() < deadline:
        time.sleep(0.01)
        seen.append(client.get("/v2/health/ready").status_code)
    assert seen[0] == 503 and seen[-1] == 200
    assert client.get("/v2/models/digits-gan/ready").status_code == 200


def test_a_model_whose_only_version_is_broken_keeps_the_server_unready(tmp_path):
    import shutil

    shutil.copytree(SHIPPED_MODELS / "digits-mlp", tmp_path / "digits-mlp")
    (tmp_path / "digits-mlp" / "1" / "model.onnx").write_bytes(b"not onnx")
    client = create_app(Settings(models=tmp_path, background_load=False)).test_client()
    response = client.get("/v2/health/ready")
    assert response.status_code == 503
    answer = client.get("/v2/models/digits-mlp/ready")
    assert answer.status_code == 503 and "failed to load" in answer.get_json()["error"]
    assert os.fspath(tmp_path) not in answer.get_json()["error"]  # no filesystem path in a response


def test_batch_limits_per_model():
    settings = Settings(max_batch_size="8,digits-cnn=2")
    assert settings.batch_limit("digits-mlp") == 8 and settings.batch_limit("digits-cnn") == 2
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings(max_batch_size="8,digits-cnn=0")
    client = create_app(Settings(models=SHIPPED_MODELS, background_load=False,
                                 max_batch_size="8,digits-cnn=2")).test_client()
    body = lambda model, shape: {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                             "data": [0.0] * (shape[0] * 64)}]}
    answer = client.post("/v2/models/digits-cnn/infer", json=body("digits-cnn", [3, 1, 8, 8]))
    assert answer.status_code == 400 and "batch size 3 exceeds the maximum of 2" in answer.get_json()["error"]
    assert client.post("/v2/models/digits-mlp/infer", json=body("digits-mlp", [3, 64])).status_code == 200


def test_device_cuda_refuses_to_start_without_the_cuda_provider(tmp_path):
    """ONNX Runtime falls back to the CPU silently; --device cuda must not (this machine has no GPU)."""
    proc = subprocess.run([sys.executable, "-m", "service", "--device", "cuda", "--models", str(SHIPPED_MODELS),
                           "--port", str(free_port()), "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "device 'cuda' was asked for, but this ONNX Runtime offers only" in proc.stdout + proc.stderr


def _children(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            found.update(int(c) for c in fh.read().split())
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
@pytest.mark.parametrize("wait", [0.0, 1.5])
def test_no_worker_outlives_the_server(tmp_path, server, wait):
    """SIGTERM at once after the first worker is ready (others may still be loading), or later: all exit."""
    from tests.conftest import start_server

    srv = start_server(SHIPPED_MODELS, tmp_path, "--workers", "2", "--server", server)
    time.sleep(wait)
    workers = _children(srv.process.pid)
    assert workers
    assert srv.stop() == 0
    assert "seems quite high" not in srv.log.read_text()  # granian's thread-count warning: nothing to act on
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_workers_die_with_a_killed_master(tmp_path, server):
    import signal

    from tests.conftest import start_server

    srv = start_server(SHIPPED_MODELS, tmp_path, "--workers", "2", "--server", server)
    workers = _children(srv.process.pid)
    srv.process.send_signal(signal.SIGKILL)
    srv.process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert workers and not [p for p in workers if _alive(p)]
