"""The naive baseline: one file, Flask + ONNX Runtime, V2 JSON in and out, no batching.

What a user writes on a first afternoon, deliberately: default ONNX Runtime session options, the JSON body
parsed by Flask, `np.asarray(data, dtype=float32).reshape(shape)`, `session.run`, `.tolist()` back out.
No validation beyond what it needs to run, no metrics, no logging of requests.

Run (the baseline of the issue's table, gthread 2 workers x 4 threads):

    NAIVE_MODELS=digits-mlp,digits-cnn .venv/bin/gunicorn -k gthread -w 2 --threads 4 \
        -b 127.0.0.1:8081 'bench.naive_app:create_app()'

NAIVE_MODELS: comma-separated model names (default: every folder of the repository);
NAIVE_REPOSITORY: the repository folder (default `models`); each model is loaded from `<repo>/<name>/1/model.onnx`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request


def load_sessions(repository: Path, names: list[str]) -> dict[str, ort.InferenceSession]:
    return {name: ort.InferenceSession(str(repository / name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
            for name in names}


def create_app() -> Flask:
    repository = Path(os.environ.get("NAIVE_REPOSITORY", "models"))
    names = [n for n in os.environ.get("NAIVE_MODELS", "").split(",") if n] or sorted(
        p.name for p in repository.iterdir() if (p / "1" / "model.onnx").is_file())
    sessions = load_sessions(repository, names)
    app = Flask(__name__)

    @app.get("/v2/health/ready")
    def ready():
        return jsonify({"ready": True})

    @app.post("/v2/models/<name>/infer")
    def infer(name: str):
        session = sessions.get(name)
        if session is None:
            return jsonify({"error": f"unknown model {name!r}"}), 404
        tensor = request.get_json()["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        input_name = session.get_inputs()[0].name
        results = session.run(None, {input_name: x})
        outputs = [{"name": meta.name, "datatype": "FP32", "shape": list(value.shape),
                    "data": value.reshape(-1).tolist()}
                   for meta, value in zip(session.get_outputs(), results)]
        return jsonify({"model_name": name, "outputs": outputs})

    return app
