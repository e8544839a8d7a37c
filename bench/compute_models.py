"""Compute-bound models for the benchmark, generated (random weights: the cost, not the answers, is measured).

`mnist-cnn`: the classic MNIST network the peers' benchmarks use, 1x28x28 -> conv 3x3 32 -> conv 3x3 64 ->
max-pool 2 -> dense 128 -> dense 10 -> softmax (1.2 M parameters, 4.8 MB), written with its config.pbtxt
(max_batch_size 64, dynamic batching on) into a model repository:

    .venv-dev/bin/python -m bench.compute_models /tmp/compute-models
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CNN_CONFIG = """name: "mnist-cnn"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { }
"""


def mnist_cnn(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32), name)

    initializers = [weight("c1", 32, 1, 3, 3), numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
                    weight("c2", 64, 32, 3, 3), numpy_helper.from_array(np.zeros(64, np.float32), "b2"),
                    weight("d1", 9216, 128), numpy_helper.from_array(np.zeros(128, np.float32), "e1"),
                    weight("d2", 128, 10), numpy_helper.from_array(np.zeros(10, np.float32), "e2")]
    nodes = [helper.make_node("Conv", ["input", "c1", "b1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2", "b2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "d1", "e1"], ["g1"]), helper.make_node("Relu", ["g1"], ["r3"]),
             helper.make_node("Gemm", ["r3", "d2", "e2"], ["g2"]),
             helper.make_node("Softmax", ["g2"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "mnist-cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def write_repository(repository: Path) -> Path:
    """The compute-bound models in `repository` (made if missing); returns it."""
    folder = repository / "mnist-cnn"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(mnist_cnn(), folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(CNN_CONFIG)
    return repository


if __name__ == "__main__":
    print(write_repository(Path(sys.argv[1])))
