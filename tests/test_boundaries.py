"""Dependency direction: service never loads torch or training; training never loads the web stack."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def loaded_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_service_loads_neither_torch_nor_training():
    modules = loaded_modules("import service.app, service.server, service.__main__")
    assert "flask" in modules  # the check sees what was loaded
    assert not {"torch", "training", "sklearn", "onnx"} & modules


def test_artifact_contract_is_standard_library_only():
    modules = loaded_modules("import service.artifact")
    assert not {"flask", "numpy", "onnxruntime", "prometheus_client", "torch"} & modules


def test_training_loads_no_web_stack():
    modules = loaded_modules("import training.__main__, training.trainer, training.export, training.config")
    assert "torch" in modules
    assert not {"flask", "gunicorn", "granian", "werkzeug", "prometheus_client"} & modules


def test_the_server_master_does_not_load_onnxruntime():
    """granian and gunicorn fork workers from the master; a worker that uses an onnxruntime the master imported
    aborts (SIGABRT, 'std::system_error') when it exits. Only workers import it, after the fork."""
    modules = loaded_modules("import service.__main__, service.server, service.settings, service.control")
    assert "gunicorn" in modules
    assert "onnxruntime" not in modules
