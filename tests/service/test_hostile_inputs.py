"""Inputs and states found by review to give a 500, a crash or a wrong answer: each is now a clear 4xx or right.

Hostile request bodies and paths are in test_hostile_catalogue.py, sent to the real server; what is here needs
the in-process app (a Content-Length the client cannot fake), a predict body or a registry in a given state."""

from __future__ import annotations

import json
import shutil

import pytest

from service.app import create_app
from service.control import Control
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from tests.conftest import SHIPPED_MODELS


@pytest.fixture(scope="module")
def client():
    return create_app(Settings(models=SHIPPED_MODELS, background_load=False)).test_client()


def infer(client, model, inputs, **extra):
    response = client.post(f"/v2/models/{model}/infer", data=json.dumps({"inputs": inputs, **extra}))
    return response.status_code, response.get_json()


def tensor(shape, data, datatype="FP32", name="input"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.mark.parametrize("body, fragment", [
    ({"instances": [{"label": 99}]}, "class indices must be in 0..9"),
    ({"instances": [{"label": 3}], "seed": -1}, "seed: expected a non-negative integer"),
])
def test_gan_predict_checks_its_inputs(client, body, fragment):
    response = client.post("/v1/models/digits-gan:predict", data=json.dumps(body))
    assert response.status_code == 400 and fragment in response.get_json()["error"]


def test_binary_classification_scores_both_classes(client):
    status, answer = infer(client, "breast-cancer-mlp", [tensor([1, 30], [0.0] * 30)],
                           outputs=[{"name": "probability", "parameters": {"classification": 2}}])
    top = answer["outputs"][0]["data"][0]
    predicted = client.post("/v1/models/breast-cancer-mlp:predict",
                            data=json.dumps({"instances": [[0.0] * 30]})).get_json()["predictions"][0]
    assert status == 200 and top.split(":")[2] == predicted["label"]
    assert float(top.split(":")[0]) >= 0.5


def test_an_unreadable_version_does_not_stop_the_others_loading(tmp_path):
    for name in ("digits-mlp", "breast-cancer-mlp"):
        shutil.copytree(SHIPPED_MODELS / name, tmp_path / name)
    (tmp_path / "breast-cancer-mlp" / "2" / "metadata.json").mkdir(parents=True)  # a folder where a file should be
    registry = ModelRegistry(Settings(models=tmp_path), Metrics())
    registry.load_all()
    assert registry.names() == ["breast-cancer-mlp", "digits-mlp"]
    assert registry.get("breast-cancer-mlp").version == 1  # the version before keeps serving
    assert [s.state for s in registry.states() if s.version == 2] == ["UNAVAILABLE"]
    assert registry.is_ready()


def test_a_deleted_broken_model_no_longer_blocks_readiness(tmp_path):
    shutil.copytree(SHIPPED_MODELS / "digits-mlp", tmp_path / "digits-mlp")
    shutil.copytree(SHIPPED_MODELS / "digits-cnn", tmp_path / "digits-cnn")
    (tmp_path / "digits-cnn" / "1" / "model.onnx").write_bytes(b"junk")
    registry = ModelRegistry(Settings(models=tmp_path), Metrics())
    registry.load_all()
    assert not registry.is_ready()
    shutil.rmtree(tmp_path / "digits-cnn")
    registry.reconcile_all()
    assert registry.is_ready() and [e["name"] for e in registry.index()] == ["digits-mlp"]


def test_load_and_unload_calls_from_different_workers_are_all_applied(tmp_path):
    """Worker A unloads one model, worker B then loads another: B must apply A's unload too."""
    for name in ("digits-mlp", "digits-cnn"):
        shutil.copytree(SHIPPED_MODELS / name, tmp_path / "models" / name)
    settings = Settings(models=tmp_path / "models", startup_wait_seconds=2)
    a, b = (ModelRegistry(settings, Metrics(), Control(tmp_path / "state")) for _ in range(2))
    a.load_all()
    b.load_all()
    a.unload("digits-mlp")
    b.load("digits-cnn")
    assert b.names() == ["digits-cnn"] and a.names() == ["digits-cnn"]
    b.load("digits-mlp")
    a.workers.apply_control()  # what A's watcher does within 0.2 s
    assert a.names() == b.names() == ["digits-cnn", "digits-mlp"]


def test_a_body_shorter_than_its_content_length_is_a_400(client):  # answered by the fast path
    body = json.dumps({"inputs": [tensor([1, 64], [0.0] * 64)]}).encode()
    response = client.post("/v2/models/digits-mlp/infer", data=body,
                           environ_overrides={"CONTENT_LENGTH": str(len(body) + 50)})
    assert response.status_code == 400
    assert f"Content-Length is {len(body) + 50} but the connection ended after {len(body)} bytes" in \
        response.get_json()["error"]
