"""Dynamic batching: the Batcher on a real ONNX Runtime session, then through the real server."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from service.batching import BESIDE_BELOW_SECONDS, Batcher, BatchingConfig, QueueFull, batching_config
from service.configfile import dynamic_batching
from service.pbtxt import parse_pbtxt
from service.runtime import load_model
from tests.conftest import start_server

SHIPPED = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def mlp():
    return load_model(SHIPPED / "digits-mlp" / "1")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


class SlowModel:
    """The real model, run through a session that holds each run long enough for requests to queue."""

    def __init__(self, model, seconds: float):
        self.model, self.seconds, self.name, self.version = model, seconds, model.name, model.version
        self.runs: list[int] = []

    def run(self, feed, outputs):
        self.runs.append(next(iter(feed.values())).shape[0])
        time.sleep(self.seconds)
        return self.model.run(feed, outputs)


def run_concurrently(batcher, model, inputs: list[np.ndarray], outputs=("probabilities",)):
    results, errors = [None] * len(inputs), [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def one(i):
        start.wait()
        try:
            results[i] = batcher.run(model, {"input": inputs[i]}, list(outputs))[0]
        except Exception as exc:  # collected and checked by the caller
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


def test_concurrent_requests_share_runs_and_each_gets_its_own_rows(mlp, digits):
    sizes: list[int] = []
    slow = SlowModel(mlp, 0.02)
    batcher = Batcher(BatchingConfig(max_batch_size=256), lambda n, s: sizes.append(n))
    inputs = [digits[i:i + 1 + i % 3] for i in range(24)]  # batches of 1, 2 and 3 rows
    results, errors = run_concurrently(batcher, slow, inputs)
    assert errors == [None] * 24
    for x, got in zip(inputs, results):
        want = mlp.run({"input": x})["probabilities"]
        assert got["probabilities"].shape == want.shape
        np.testing.assert_allclose(got["probabilities"], want, rtol=1e-5, atol=1e-6)
    assert sum(sizes) == sum(len(x) for x in inputs) and sizes == slow.runs
    assert len(sizes) < 24 and max(sizes) > 3  # requests that arrived during a run went together


def test_batch_never_exceeds_max_batch_size(mlp, digits):
    slow = SlowModel(mlp, 0.02)
    batcher = Batcher(BatchingConfig(max_batch_size=5), lambda n, s: None)
    results, errors = run_concurrently(batcher, slow, [digits[i:i + 2] for i in range(16)])
    assert errors == [None] * 16 and max(slow.runs) <= 5 and sum(slow.runs) == 32


def test_a_lone_request_runs_at_once_on_its_own(mlp, digits):
    sizes = []
    batcher = Batcher(BatchingConfig(max_batch_size=256), lambda n, s: sizes.append(n))
    values, started = batcher.run(mlp, {"input": digits[:3]}, ["probabilities"])
    assert sizes == [3] and values["probabilities"].shape == (3, 10) and started <= time.perf_counter()


def test_requests_run_beside_a_session_whose_runs_are_too_quick_to_batch(mlp, digits):
    """After a lone run under BESIDE_BELOW_SECONDS, a request that finds the session busy runs at once beside it
    (no queue, no batch); the slow runs here only make the requests overlap."""
    class Overlapping(SlowModel):
        in_flight = most = 0

        def run(self, feed, outputs):
            Overlapping.in_flight += 1
            Overlapping.most = max(Overlapping.most, Overlapping.in_flight)
            try:
                return super().run(feed, outputs)
            finally:
                Overlapping.in_flight -= 1

    sizes = []
    batcher = Batcher(BatchingConfig(max_batch_size=256), lambda n, s: sizes.append(n))
    batcher.run(mlp, {"input": digits[:1]}, ["probabilities"])  # digits-mlp alone: tens of microseconds
    assert batcher.run_seconds < BESIDE_BELOW_SECONDS
    slow = Overlapping(mlp, 0.05)
    results, errors = run_concurrently(batcher, slow, [digits[i:i + 1] for i in range(8)])
    assert errors == [None] * 8 and slow.runs == [1] * 8 and sizes == [1] * 9
    assert Overlapping.most > 1  # side by side on the one session
    for x, got in zip([digits[i:i + 1] for i in range(8)], results):
        np.testing.assert_allclose(got["probabilities"], mlp.run({"input": x})["probabilities"], rtol=1e-6)


def test_queue_delay_waits_for_a_preferred_size(mlp, digits):
    slow = SlowModel(mlp, 0.0)
    config = BatchingConfig(max_batch_size=64, max_queue_delay_us=2_000_000, preferred_batch_sizes=(8,))
    batcher = Batcher(config, lambda n, s: None)
    began = time.perf_counter()
    results, errors = run_concurrently(batcher, slow, [digits[i:i + 1] for i in range(8)])
    assert errors == [None] * 8 and slow.runs == [8]  # all eight in one run, well before the 2 s delay
    assert time.perf_counter() - began < 1.5


def test_queue_delay_expires_with_fewer(mlp, digits):
    config = BatchingConfig(max_batch_size=64, max_queue_delay_us=50_000, preferred_batch_sizes=(32,))
    slow = SlowModel(mlp, 0.0)
    began = time.perf_counter()
    Batcher(config, lambda n, s: None).run(slow, {"input": digits[:1]}, ["probabilities"])
    assert slow.runs == [1] and 0.04 < time.perf_counter() - began < 1.0


def test_full_queue_answers_503(mlp, digits):
    slow = SlowModel(mlp, 0.05)
    batcher = Batcher(BatchingConfig(max_batch_size=1, max_queue_size=2), lambda n, s: None)
    results, errors = run_concurrently(batcher, slow, [digits[i:i + 1] for i in range(12)])
    full = [e for e in errors if e is not None]
    assert full and all(isinstance(e, QueueFull) and e.status_code == 503 for e in full)
    assert "the batching queue is full (2 requests waiting)" in full[0].message
    assert sum(r is not None for r in results) == 12 - len(full) >= 3


def test_a_failed_run_fails_each_request_of_its_batch(mlp, digits):
    class Broken(SlowModel):
        def run(self, feed, outputs):
            time.sleep(0.02)
            raise RuntimeError("boom")

    batcher = Batcher(BatchingConfig(max_batch_size=64), lambda n, s: None)
    results, errors = run_concurrently(batcher, Broken(mlp, 0), [digits[i:i + 1] for i in range(6)])
    assert all(isinstance(e, RuntimeError) for e in errors)
    # ... and the batcher still serves afterwards
    assert batcher.run(mlp, {"input": digits[:1]}, ["probabilities"])[0]["probabilities"].shape == (1, 10)


@pytest.mark.parametrize("text, expected", [
    ("dynamic_batching { }", BatchingConfig(256)),
    ("dynamic_batching {\n  max_queue_delay_microseconds: 100\n  preferred_batch_size: [ 32, 8 ]\n"
     "  default_queue_policy { max_queue_size: 16 }\n}", BatchingConfig(256, 100, (8, 32), 16)),
    ("# dynamic_batching { }\nmax_batch_size: 8", None),
    ("max_batch_size: 8 dynamic_batching: { max_queue_delay_microseconds: 7 default_queue_policy: "
     "{ max_queue_size: 4 } }", BatchingConfig(256, 7, (), 4)),
    ("max_batch_size: 8", None),
])
def test_parse_config(text, expected):
    block = dynamic_batching(parse_pbtxt(f'name: "m"\n{text}\n'))
    assert (None if block is None else batching_config(block, 256)) == expected


def test_server_batches_concurrent_clients_and_shows_it(tmp_path, digits):
    repo = tmp_path / "models"
    shutil.copytree(SHIPPED / "digits-cnn", repo / "digits-cnn")
    config = repo / "digits-cnn" / "config.pbtxt"
    config.write_text(config.read_text().replace("dynamic_batching { }",
                                                 "dynamic_batching {\n  max_queue_delay_microseconds: 50000\n}"))
    srv = start_server(repo, tmp_path, "--workers", "1", "--threads", "16")
    try:
        meta = json.loads(srv.request("GET", "/v2/models/digits-cnn")[2])
        assert json.loads(meta["parameters"]["dynamic_batching"])["max_queue_delay_microseconds"] == 50000
        x = digits[:32].reshape(32, 1, 8, 8)
        want = load_model(SHIPPED / "digits-cnn" / "1").run({"input": x})["probabilities"]
        got = [None] * 32
        together = threading.Barrier(32)

        def one(i):
            client = httpclient.InferenceServerClient(srv.url)
            inp = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
            inp.set_data_from_numpy(x[i:i + 1])
            together.wait()  # all 32 send at once, so that a slow machine still queues them together
            got[i] = client.infer("digits-cnn", [inp]).as_numpy("probabilities")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-6)
        families = {f.name: f for f in text_string_to_metric_families(srv.request("GET", "/metrics")[2].decode())}
        samples = {(s.name, s.labels.get("le")): s.value for s in families["nnserve_inference_batch_size"].samples
                   if s.labels.get("model") == "digits-cnn"}
        runs, rows = samples[("nnserve_inference_batch_size_count", None)], samples[("nnserve_inference_batch_size_sum", None)]
        assert rows == 32 and runs < 20  # batches of several requests
    finally:
        srv.stop()


def test_batching_follows_the_config_and_the_flag_overrides_it(tmp_path):
    repo = tmp_path / "models"
    for name in ("digits-mlp", "digits-cnn"):
        shutil.copytree(SHIPPED / name, repo / name)
    config = repo / "digits-mlp" / "config.pbtxt"
    assert "\ndynamic_batching { }\n" in config.read_text()  # shipped on, as export writes it
    config.write_text(config.read_text().replace("dynamic_batching { }\n", ""))  # the block removed: off
    for flags, cnn in (((), {"max_batch_size": 256, "max_queue_delay_microseconds": 0, "preferred_batch_size": [],
                             "max_queue_size": 0}),
                       (("--no-dynamic-batching",), None)):
        srv = start_server(repo, tmp_path, "--workers", "1", *flags)
        try:
            described = {name: json.loads(json.loads(srv.request("GET", f"/v2/models/{name}")[2])
                                          ["parameters"]["dynamic_batching"]) for name in ("digits-mlp", "digits-cnn")}
            assert described == {"digits-mlp": None, "digits-cnn": cnn}
        finally:
            srv.stop()
