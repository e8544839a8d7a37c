"""`make test-gpu` (tests/gpu/run_gpu.py) without a GPU: the early exit for real, the venv plan and the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu import run_gpu

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "gpu" / "run_gpu.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("NNSERVE_GPU_FORCE", "GPU_WHEELS")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, check=False, capture_output=True, text=True,
                          timeout=60, env={**environ, **(env or {})})


def test_without_a_gpu_it_exits_77_with_one_line_saying_why(tmp_path):
    result = _run("--nvidia-smi", str(tmp_path / "nvidia-smi"), "--dev-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == run_gpu.EXIT_NO_GPU == 77
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and result.stderr == ""
    assert lines[0].startswith("test-gpu: no NVIDIA GPU on this machine (")
    assert "nvidia-smi: not found" in lines[0] and "nothing was run" in lines[0]
    assert not (tmp_path / "o").exists()  # nothing was written


def test_on_this_machine_the_script_exits_77_unless_it_has_a_gpu():
    """The detection as `make test-gpu` runs it, with no overrides."""
    gpus, _ = run_gpu.detect_gpu()
    if gpus:
        pytest.skip(f"this machine has a GPU: {gpus}")
    result = _run()
    assert result.returncode == 77 and result.stdout.count("\n") == 1


def test_a_failing_nvidia_smi_means_no_gpu(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                    "exit 9\n")
    fake.chmod(0o755)
    gpus, why = run_gpu.detect_gpu(str(fake), str(tmp_path))
    assert gpus == [] and "exited 9" in why and "could not communicate" in why


def test_a_listed_gpu_is_found_and_a_dry_run_prints_the_plan(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    assert run_gpu.detect_gpu(str(fake), str(tmp_path)) == (["GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"], "")
    result = _run("--nvidia-smi", str(fake), "--dev-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--dry-run",
                  env={"GPU_WHEELS": str(tmp_path / "wheels")})
    assert result.returncode == 0, result.stderr
    assert "-m pip install" in result.stdout and "--no-index --find-links " + str(tmp_path / "wheels") in result.stdout
    for step in ("ort-cuda", "serve", "refuse", "train", "bench"):
        assert f"tests.gpu.checks {step} " in result.stdout
    assert "onnxruntime-gpu[cuda,cudnn]==" in (tmp_path / "o" / "requirements.txt").read_text()


def test_a_device_node_without_nvidia_smi_counts_as_a_gpu(tmp_path):
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()
    gpus, why = run_gpu.detect_gpu(str(tmp_path / "absent-nvidia-smi"), str(tmp_path))
    assert gpus == [f"{tmp_path / 'nvidia0'} (nvidia-smi not found)"] and why == ""


def test_the_venv_plan_swaps_in_onnxruntime_gpu_at_the_locks_version():
    plan = run_gpu.venv_plan(ROOT)
    lock = dict(line.split("==") for line in (ROOT / "requirements/serve.lock").read_text().split())
    assert plan["onnxruntime_version"] == lock["onnxruntime"]
    reqs = plan["requirements"]
    assert f"onnxruntime-gpu[cuda,cudnn]=={lock['onnxruntime']}" in reqs
    assert "torch==2.13.0" in reqs
    names = [run_gpu._name(r) for r in reqs]
    assert "onnxruntime" not in names and len(names) == len(set(names))  # the CPU wheel would shadow the GPU one
    assert {"flask", "granian", "grpcio", "numpy", "onnx", "tritonclient"} <= set(names)
    for name, version in lock.items():  # every serve pin, as the runtime-gpu image installs them
        if name != "onnxruntime":
            assert f"{name}=={version}" in reqs
    constraints = plan["constraints"]
    assert not any(run_gpu._name(c) in ("onnxruntime", "onnxruntime-gpu") for c in constraints)
    assert "torch==2.13.0" in constraints and len(constraints) > 50
    install = plan["commands"][-1]
    assert install[1:4] == ["-m", "pip", "install"] and "--no-index" not in install
    assert install[-4:] == ["-r", str(ROOT / "build/gpu/requirements.txt"), "-c", str(ROOT / "build/gpu/constraints.txt")]


def test_with_a_wheel_folder_pip_uses_it_and_no_index(tmp_path):
    plan = run_gpu.venv_plan(ROOT, wheels=str(tmp_path))
    install = plan["commands"][-1]
    assert install[install.index("--no-index") + 1:install.index("--no-index") + 3] == ["--find-links", str(tmp_path)]
    assert plan["digest"] != run_gpu.venv_plan(ROOT)["digest"]  # a venv built another way is not reused


def test_the_summary_records_every_step_and_a_failure_makes_the_exit_non_zero(tmp_path):
    results = [
        run_gpu.StepResult("venv", "pass", 61.2, "built"),
        run_gpu.StepResult("serve", "fail", 12.5, "digits-cnn: answers differ | by 3e-4",
                           {"tables": {"zoo models": [{"model": "digits-cnn", "ok": "NO"}]}}),
        run_gpu.StepResult("bench", "skip", 0.0, "needs .venv-gpu"),
    ]
    doc = run_gpu.write_summary(tmp_path, results, {"started_at": "2026-01-01T00:00:00+00:00", "commit": "abc",
                                                    "gpus": ["GPU 0: test"]})
    assert doc["exit_code"] == run_gpu.exit_code(results) == 1 and not doc["passed"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["name"], s["status"], s["seconds"]) for s in saved["steps"]] == [
        ("venv", "pass", 61.2), ("serve", "fail", 12.5), ("bench", "skip", 0.0)]
    assert saved["total_seconds"] == 73.7 and saved["commit"] == "abc"
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# make test-gpu: FAILED")
    assert "| serve | FAIL | 12.5 | digits-cnn: answers differ \\| by 3e-4 |" in md
    assert "## serve: zoo models" in md and "| digits-cnn | NO |" in md

    passed = [run_gpu.StepResult("venv", "pass", 1.0), run_gpu.StepResult("train", "skip", 0.0)]
    assert run_gpu.write_summary(tmp_path, passed, {})["exit_code"] == run_gpu.exit_code(passed) == 0
    assert (tmp_path / "summary.md").read_text().startswith("# make test-gpu: passed")


def test_unknown_steps_are_a_usage_error():
    result = _run("--steps", "venv,nope", "--dry-run")
    assert result.returncode == 2 and "unknown steps ['nope']" in result.stderr
