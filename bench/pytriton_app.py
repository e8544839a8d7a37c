"""PyTriton (a real tritonserver) serving one zoo model with ONNX Runtime inside its Python callable, as the naive
baseline does: Triton's own HTTP and gRPC endpoints in front of the same ONNX file, for comparisons.

    python3.11 -m venv /tmp/pytriton && /tmp/pytriton/bin/pip install nvidia-pytriton==0.5.14 onnxruntime==1.31.1
    LD_LIBRARY_PATH=$(python3.11 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))') \
        /tmp/pytriton/bin/python bench/pytriton_app.py digits-mlp HTTP_PORT GRPC_PORT METRICS_PORT

PyTriton's Python backend stub links the system's libpython3.11; LD_LIBRARY_PATH makes it load the one of the
interpreter that runs this script, whose standard library it then reads (without it the model fails to load
with "'_thread.RLock' object has no attribute '_recursion_count'" on this machine).
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

model = sys.argv[1]
session = ort.InferenceSession(f"models/{model}/1/model.onnx", providers=["CPUExecutionProvider"])  # run from the root
shape = (64,) if model == "digits-mlp" else (1, 8, 8)


@batch
def infer(input):
    return {"probabilities": session.run(["probabilities"], {"input": input})[0]}


config = TritonConfig(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), metrics_port=int(sys.argv[4]))
with Triton(config=config) as triton:
    triton.bind(model_name=model, infer_func=infer, inputs=[Tensor(name="input", dtype=np.float32, shape=shape)],
                outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
                config=ModelConfig(max_batch_size=64))
    triton.serve()
