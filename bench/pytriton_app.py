"""PyTriton (a real tritonserver) serving zoo models with ONNX Runtime inside its Python callable, as the naive
baseline does: Triton's own HTTP and gRPC endpoints in front of the same ONNX files, for comparisons.
`make bench` runs it as the `pytriton` server (in `.venv-pytriton`), by hand:

    python3.11 -m venv .venv-pytriton && .venv-pytriton/bin/pip install nvidia-pytriton==0.5.14 onnxruntime==1.31.1
    LD_LIBRARY_PATH=$(python3.11 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))') \\
        .venv-pytriton/bin/python bench/pytriton_app.py HTTP_PORT GRPC_PORT METRICS_PORT digits-mlp digits-cnn

PYTRITON_REPOSITORY (default models/) is the repository the ONNX files are read from. PyTriton's default model
configuration batches dynamically, as Triton's dynamic batcher does.

PyTriton's Python backend stub links the system's libpython3.11; LD_LIBRARY_PATH makes it load the one of the
interpreter that runs this script, whose standard library it then reads (without it the model fails to load
with "'_thread.RLock' object has no attribute '_recursion_count'" on this machine).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

SHAPES = {"digits-mlp": (64,), "digits-cnn": (1, 8, 8), "mnist-cnn": (1, 28, 28)}
REPOSITORY = os.environ.get("PYTRITON_REPOSITORY", "models")  # relative to the root, where this is run from


def infer_function(model: str):
    session = ort.InferenceSession(f"{REPOSITORY}/{model}/1/model.onnx", providers=["CPUExecutionProvider"])

    @batch
    def infer(input):
        return {"probabilities": session.run(["probabilities"], {"input": input})[0]}
    return infer


http_port, grpc_port, metrics_port, *models = sys.argv[1:]
config = TritonConfig(http_port=int(http_port), grpc_port=int(grpc_port), metrics_port=int(metrics_port))
with Triton(config=config) as triton:
    for model in models:
        triton.bind(model_name=model, infer_func=infer_function(model),
                    inputs=[Tensor(name="input", dtype=np.float32, shape=SHAPES[model])],
                    outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
                    config=ModelConfig(max_batch_size=64))
    triton.serve()
