"""The models shipped in models/: all ten zoo models, each loads, matches its config, and reaches its bar."""

from __future__ import annotations

import types

import numpy as np
import onnxruntime as ort
import pytest

from service import artifact
from service.runtime import load_model
from tests.conftest import SHIPPED_MODELS
from training.config import load_config
from training.export import metric_matches, ort_predictor, predictor_metrics
from training.trainer import prepare
from training.zoo import ZOO, target_met

SHIPPED = [(name, version) for name in artifact.list_models(SHIPPED_MODELS)
           for version in artifact.list_versions(SHIPPED_MODELS / name)]


def test_every_zoo_model_is_shipped_and_nothing_else():
    assert sorted(name for name, _ in SHIPPED) == sorted(ZOO)
    assert all(version == 1 for _, version in SHIPPED)


def test_the_repository_is_small_enough_for_git():
    total = sum(p.stat().st_size for p in SHIPPED_MODELS.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024, f"models/ holds {total / 1e6:.1f} MB"


@pytest.mark.parametrize("name, version", SHIPPED, ids=[f"{n}/{v}" for n, v in SHIPPED])
def test_shipped_model_loads_matches_its_config_and_reaches_its_bar(name, version, tmp_path):
    version_dir = SHIPPED_MODELS / name / str(version)
    assert sorted(p.name for p in version_dir.iterdir()) == ["metadata.json", "model.onnx"]
    model = load_model(version_dir, device="cpu")  # checks schema, hash, graph and embedded metadata
    meta = model.metadata
    config = load_config(name)
    assert meta["training"]["config_sha256"] == config.sha256(), (
        f"{name} was built from a config that has changed since; retrain it with `python -m training zoo`")

    prepared = prepare(config)
    assert prepared.split.describe() == meta["training"]["split"]
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    plan = types.SimpleNamespace(inputs=meta["inputs"], outputs=meta["outputs"])
    metrics = predictor_metrics(ort_predictor(session, plan), config, prepared, tmp_path)
    recorded = meta["training"]["metrics"]
    headline = meta["training"]["headline_metric"]
    assert metric_matches(headline, metrics[headline], recorded[f"onnx_test_{headline}"])
    summary = {"task": meta["task"], "metrics": {f"test_{k}": v for k, v in metrics.items()},
               "baseline": meta["training"]["baseline"]}
    assert target_met(name, summary), f"{name}: {headline} {metrics[headline]:.4f} misses the zoo's bar"
    assert np.isfinite(list(metrics.values())).all()
