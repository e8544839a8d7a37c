"""Dynamic int8 quantization: eligibility, a smaller MLP that keeps its metadata and accuracy, and every gate."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from training import quantize
from training.quantize import decide, eligibility, quantize_dynamic_bytes, time_side_by_side

REPEATS = 30  # timing is not a unit-test matter: enough to exercise the code, not to judge speed
METADATA = {"nnserve": json.dumps({"name": "digits-mlp", "version": 1}), "author": "tests"}


def export(module: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """torch -> ONNX as the exporter does it: dynamo, opset 20, one self-contained model, dynamic batch."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, external_data=False, opset_version=20,
                                    input_names=["input"], output_names=["logits"], verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto


@pytest.fixture(scope="module")
def digits():
    """Digits split 80/20 with a fixed permutation, pixels scaled to [0, 1]."""
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = (X[order] / 16.0).astype(np.float32), y[order].astype(np.int64)
    cut = int(0.8 * len(y))
    return X[:cut], y[:cut], X[cut:], y[cut:]


@pytest.fixture(scope="module")
def mlp(digits) -> onnx.ModelProto:
    """A 64->256->256->10 MLP trained a few epochs on digits (fixed seed), exported, with custom metadata."""
    X_train, y_train, _, _ = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    X, y = torch.from_numpy(X_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: a second thread only helps on an idle machine, and hurts a lot on a busy one
    try:
        for _ in range(15):
            for idx in torch.randperm(len(y), generator=generator).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model = export(net, X[:2])
    onnx.helper.set_model_props(model, METADATA)
    return model


@pytest.fixture(scope="module")
def cnn() -> onnx.ModelProto:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    return export(net, torch.randn(2, 1, 8, 8))


@pytest.fixture(scope="module")
def accuracy(digits):
    """evaluate(bytes) -> test accuracy of an ONNX model on digits."""
    _, _, X_test, y_test = digits

    def evaluate(model_bytes: bytes) -> float:
        logits = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, {"input": X_test})[0]
        return float((logits.argmax(axis=1) == y_test).mean())

    return evaluate


@pytest.fixture(scope="module")
def make_feed(digits):
    X_test = digits[2]
    return lambda batch: {"input": np.ascontiguousarray(np.resize(X_test, (batch, X_test.shape[1])))}


def test_eligibility(mlp, cnn):
    assert eligibility(mlp) == []
    reasons = eligibility(cnn)
    assert len(reasons) == 1 and "Conv (1 node)" in reasons[0]
    relu = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])]))
    assert eligibility(relu) == ["graph has no MatMul or Gemm node to quantize"]


def test_a_cnn_is_refused_without_quantizing(cnn, monkeypatch):
    def must_not_quantize(_bytes):
        raise AssertionError("a refused graph was quantized")

    monkeypatch.setattr(quantize, "quantize_dynamic_bytes", must_not_quantize)
    evaluated = []
    decision, quant_bytes = decide(cnn, evaluated.append, lambda b: {"input": np.zeros((b, 1, 8, 8), np.float32)})
    assert not decision.publish and quant_bytes is None and evaluated == []
    assert len(decision.reasons) == 1 and "Conv" in decision.reasons[0]
    json.dumps(decision.report)


def test_quantized_mlp_is_smaller_keeps_metadata_and_accuracy(mlp, accuracy):
    float_bytes = mlp.SerializeToString()
    quant_bytes = quantize_dynamic_bytes(float_bytes)
    assert len(quant_bytes) < len(float_bytes) / 2
    quantized = onnx.load_from_string(quant_bytes)
    assert {p.key: p.value for p in quantized.metadata_props} == METADATA
    ops = {node.op_type for node in quantized.graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops
    session = ort.InferenceSession(quant_bytes, providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == METADATA
    before, after = accuracy(float_bytes), accuracy(quant_bytes)
    assert before > 0.9, "the MLP must be trained for the accuracy check to mean anything"
    assert abs(before - after) * 100 <= 0.5


def test_time_side_by_side_measures_both_models(mlp, make_feed):
    float_bytes = mlp.SerializeToString()
    timings = time_side_by_side(float_bytes, quantize_dynamic_bytes(float_bytes), make_feed, (1, 64), REPEATS)
    assert set(timings) == {"1", "64"}
    for row in timings.values():
        assert row["float_s"] > 0 and row["int8_s"] > 0
        assert row["speedup"] == pytest.approx(row["float_s"] / row["int8_s"])


def test_a_two_point_drop_is_refused(mlp, make_feed):
    float_bytes = mlp.SerializeToString()
    decision, quant_bytes = decide(mlp, lambda b: 0.95 if b == float_bytes else 0.93, make_feed, repeats=REPEATS)
    assert not decision.publish and quant_bytes is not None
    assert any("dropped by 2.00 points" in reason for reason in decision.reasons)
    assert decision.report["metric_drop_points"] == pytest.approx(2.0)


def test_an_error_metric_counts_its_increase(mlp, make_feed):
    float_bytes = mlp.SerializeToString()
    decision, _ = decide(mlp, lambda b: 0.10 if b == float_bytes else 0.12, make_feed, higher_is_better=False,
                         repeats=REPEATS)
    assert any("worsened by 2.00 points" in reason for reason in decision.reasons)


def test_decide_on_the_mlp_reports_every_fact(mlp, accuracy, make_feed):
    decision, quant_bytes = decide(mlp, accuracy, make_feed, repeats=REPEATS)
    report = json.loads(json.dumps(decision.report))
    expected = {"publish", "eligible", "quantized_op_types", "float_bytes", "int8_bytes", "size_ratio",
                "metric_float", "metric_int8", "metric_drop_points", "higher_is_better", "max_drop_points",
                "timings", "batch_sizes", "repeats", "gate_batch", "intra_op_num_threads"}
    assert set(report) == expected and all(report[key] is not None for key in expected)
    assert report["batch_sizes"] == [1, 64] and report["repeats"] == REPEATS and report["gate_batch"] == 64
    assert set(report["timings"]) == {"1", "64"}
    assert report["int8_bytes"] < report["float_bytes"] and report["metric_drop_points"] <= 0.5
    assert quant_bytes is not None and report["publish"] == decision.publish
    if decision.publish:
        assert decision.reasons == []
    else:  # the metric held, so speed is the only gate that can refuse
        assert decision.reasons and all("not faster at batch 64" in reason for reason in decision.reasons)
