"""The naive Flask app of bench/naive_app.py, running the torch model eagerly instead of ONNX Runtime.

What a user writes without ONNX: load the trained network, call it per request under `torch.inference_mode()`,
default torch threading. Weights come from the run folders of
`python -m training zoo --out runs/zoo --only <names> --quiet` (config.json + best.pt), through
`training.runs.load_trained` and the task's served head (`training.tasks`): the same module that is exported to ONNX.
Runs in `.venv-dev` (torch):

    TORCH_MODELS=digits-mlp .venv-dev/bin/gunicorn -k gthread -w 2 --threads 4 \
        -b 127.0.0.1:8082 'bench.torch_app:create_app()'

TORCH_MODELS: comma-separated model names (required); TORCH_RUNS: the folder of run folders (default runs/zoo).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from flask import Flask, jsonify, request

from training.runs import load_trained
from training.tasks import get_task


def load_models(runs: Path, names: list[str]) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
    models = {}
    for name in names:
        resolved, _summary, network = load_trained(runs / name)
        task = get_task(resolved.resolved_task)
        models[name] = (task.serve(network).eval(), task.outputs)
    return models


def create_app() -> Flask:
    runs = Path(os.environ.get("TORCH_RUNS", "runs/zoo"))
    names = [n for n in os.environ.get("TORCH_MODELS", "").split(",") if n]
    if not names:
        raise SystemExit("torch_app: set TORCH_MODELS to a comma-separated list of zoo model names")
    models = load_models(runs, names)
    app = Flask(__name__)

    @app.get("/v2/health/ready")
    def ready():
        return jsonify({"ready": True})

    @app.post("/v2/models/<name>/infer")
    def infer(name: str):
        entry = models.get(name)
        if entry is None:
            return jsonify({"error": f"unknown model {name!r}"}), 404
        model, output_names = entry
        tensor = request.get_json()["inputs"][0]
        x = torch.from_numpy(np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))
        with torch.inference_mode():
            result = model(x)
        results = result if isinstance(result, tuple) else (result,)
        outputs = [{"name": out_name, "datatype": "FP32", "shape": list(value.shape),
                    "data": value.reshape(-1).tolist()}
                   for out_name, value in zip(output_names, results)]
        return jsonify({"model_name": name, "outputs": outputs})

    return app
