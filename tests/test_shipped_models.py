"""The models shipped in models/ load, match their configs, and reach their recorded quality."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from service import artifact
from service.runtime import load_model
from tests.conftest import SHIPPED_MODELS
from training.config import load_config
from training.trainer import prepare

SHIPPED = [(name, version) for name in artifact.list_models(SHIPPED_MODELS)
           for version in artifact.list_versions(SHIPPED_MODELS / name)]
MIN_ACCURACY = {"digits-mlp": 0.97}


def test_digits_mlp_is_shipped():
    assert ("digits-mlp", 1) in SHIPPED


@pytest.mark.parametrize("name, version", SHIPPED, ids=[f"{n}/{v}" for n, v in SHIPPED])
def test_shipped_model_loads_and_matches_its_config(name, version):
    version_dir = SHIPPED_MODELS / name / str(version)
    assert sorted(p.name for p in version_dir.iterdir()) == ["metadata.json", "model.onnx"]
    model = load_model(version_dir, device="cpu")  # checks schema, hash, graph and embedded metadata
    meta = model.metadata
    config = load_config(name)
    assert meta["training"]["config_sha256"] == config.sha256(), (
        f"{name} was built from a config that has changed since; retrain it")

    data, split = prepare(config)
    assert split.describe() == meta["training"]["split"]
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"input": data.X[split.test]})[0]
    accuracy = float((probs.argmax(1) == data.y[split.test]).mean())
    assert accuracy == pytest.approx(meta["training"]["metrics"]["onnx_test_accuracy"], abs=1e-9)
    assert accuracy >= MIN_ACCURACY.get(name, 0.0)
