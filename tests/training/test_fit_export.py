"""Training writes a complete run; export verifies against torch and publishes, or publishes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service import artifact
from service.runtime import load_model
from tests.conftest import FAST_EPOCHS, ROOT
from training.config import apply_overrides, load_config
from training.export import ExportError, export_run, plan_export
from training.prepare import prepare
from training.runs import config_of, load_trained
from training.trainer import fit
from training.verify import verify


def test_run_folder_is_complete(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "metrics.jsonl", "best.pt", "last.pt", "summary.json"} <= names
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, FAST_EPOCHS + 1))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["metrics"]["test_accuracy"] > 0.9
    assert summary["split"]["train"] + summary["split"]["val"] + summary["split"]["test"] == 1797
    torch.load(trained_run / "last.pt", weights_only=True)  # plain tensors and numbers only


def test_same_seed_gives_the_same_run(tmp_path):
    config = apply_overrides(load_config("digits-mlp"), ["train.epochs=2"])
    first = fit(config, tmp_path / "a", log=lambda _m: None)
    second = fit(config, tmp_path / "b", log=lambda _m: None)
    assert first["metrics"] == second["metrics"]
    assert first["split"] == second["split"]


def test_export_embeds_the_metadata_and_verifies(exported_repo):
    version_dir = exported_repo / "digits-mlp" / "1"
    meta = artifact.read_metadata(version_dir)
    model = onnx.load(version_dir / "model.onnx")
    embedded = {p.key: p.value for p in model.metadata_props}[artifact.METADATA_PROP]
    assert json.loads(embedded) == artifact.embedded_view(meta)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][0]  # symbolic batch dim
    assert model.opset_import[0].version == 20
    parity = meta["export"]["parity"]
    assert [c["input_shapes"][0][0] for c in parity["checks"]] == [1, 3, 5, 33, 64] and parity["max_abs_diff"] <= 1e-5
    metrics = meta["training"]["metrics"]
    assert abs(metrics["onnx_test_accuracy"] - metrics["test_accuracy"]) <= 0.001
    files = sorted(str(p.relative_to(version_dir)) for p in version_dir.rglob("*") if p.is_file())
    assert files == ["metadata.json", "model.onnx", "model_card.md", "plots/confusion.png", "plots/curves.png"]
    assert sorted(meta["files"]) == [f for f in files if f != "metadata.json"]


def test_a_lone_model_file_describes_itself(exported_repo):
    session = ort.InferenceSession(str(exported_repo / "digits-mlp" / "2" / "model.onnx"))
    meta = json.loads(session.get_modelmeta().custom_metadata_map[artifact.METADATA_PROP])
    assert meta["name"] == "digits-mlp" and meta["version"] == 2 and meta["labels"][3] == "3"
    probs = session.run(None, {"input": np.zeros((5, 64), np.float32)})[0]
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)  # softmax is inside the graph


def test_the_service_loads_the_export(exported_repo):
    model = load_model(exported_repo / "digits-mlp" / "2", device="cpu")
    assert model.version == 2 and model.provider == "CPUExecutionProvider"


def test_verify_reports_every_mismatch(trained_run):
    """An exported graph checked against a different torch model fails on values, every shape reported."""
    exported, resolved, summary = export_run(trained_run)
    _, _, other = load_trained(trained_run)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    plan = plan_export(resolved, summary, other, prepare(config_of(resolved)))
    _, _, problems = verify(exported.model, plan)
    assert sum("exceeds atol" in p for p in problems) == 5, problems


def test_failed_check_publishes_nothing(trained_run, tmp_path):
    """The recorded torch accuracy disagrees with the exported model's: the CLI refuses and says why."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["metrics"]["test_accuracy"] = 0.5
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ExportError, match="test accuracy: ONNX"):
        export_run(run)
    repo = tmp_path / "repo"
    proc = subprocess.run([sys.executable, "-m", "training", "export", str(run), "--name", "digits-mlp",
                           "--models", str(repo)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "nothing was published" in proc.stderr and "test accuracy" in proc.stderr
    assert artifact.list_versions(repo / "digits-mlp") == []


def test_cli_fit_then_export_publishes_the_next_version(tmp_path, exported_repo):
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    run = tmp_path / "run"
    fit_proc = subprocess.run([sys.executable, "-m", "training", "fit", "--arch", "mlp", "--dataset", "digits",
                               "--epochs", "2", "--quiet", "--out", str(run)], cwd=ROOT, capture_output=True,
                              text=True)
    assert fit_proc.returncode == 0, fit_proc.stderr
    export_proc = subprocess.run([sys.executable, "-m", "training", "export", str(run), "--name", "digits-mlp",
                                  "--models", str(repo)], cwd=ROOT, capture_output=True, text=True)
    assert export_proc.returncode == 0, export_proc.stderr
    assert "published digits-mlp version 3" in export_proc.stdout
    assert artifact.list_versions(repo / "digits-mlp") == [1, 2, 3]


@pytest.mark.parametrize("args, fragment", [
    (["fit", "--arch", "resnet", "--epochs", "1"], "unknown architecture 'resnet'; valid architectures are"),
    (["fit", "--dataset", "mnist", "--epochs", "1"], "unknown dataset 'mnist'; valid datasets are"),
    (["fit", "--set", "optimizer.name=lbfgs", "--epochs", "1"], "unknown optimizer 'lbfgs'"),
    (["fit", "--set", "optimizer.betas=1"], "unknown key(s) ['optimizer.betas']"),
    (["fit", "--set", "model.width=3", "--epochs", "1"], "unknown key(s) ['width'] for architecture 'mlp'"),
    (["export", "/nonexistent", "--name", "x"], "is not a finished run folder"),
])
def test_cli_errors_name_the_problem(args, fragment, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training", *args, *(["--out", str(tmp_path / "r")]
                          if args[0] == "fit" else [])], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr


def test_model_card_and_triton_config(exported_repo):
    card = (exported_repo / "digits-mlp" / "2" / "model_card.md").read_text()
    assert card.startswith("# digits-mlp version 2")
    for fragment in ("## Inputs and outputs", "| input | `input` | FP32 | [-1, 64] |", "curl -s http://127.0.0.1:8080/v2/models/digits-mlp/versions/2/infer",
                     "Best classic baseline on the same split", "![curves](plots/curves.png)"):
        assert fragment in card
    config = (exported_repo / "digits-mlp" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 256" in config
    assert 'name: "input"\n    data_type: TYPE_FP32\n    dims: [ 64 ]' in config
    assert 'name: "probabilities"\n    data_type: TYPE_FP32\n    dims: [ 10 ]' in config


def run_check(repo):
    return subprocess.run([sys.executable, "-m", "training", "check", str(repo)], cwd=ROOT, capture_output=True,
                          text=True)


def test_check_accepts_a_good_repository_and_names_every_problem(exported_repo, tmp_path):
    assert run_check(exported_repo).returncode == 0
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    model = repo / "digits-mlp" / "1" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])  # cut short, as by a full disk
    (repo / "digits-mlp" / "2" / "plots" / "curves.png").unlink()
    (repo / "digits-mlp" / ".tmp-killed").mkdir()
    (repo / "digits-mlp" / "config.pbtxt").write_text("name: \"x\"\n")
    proc = run_check(repo)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert any(l.startswith("digits-mlp/1: model.onnx: expected") and "cut short" in l for l in lines)
    assert "digits-mlp/2: plots/curves.png: listed in metadata.json but missing" in lines
    assert any(l.startswith("digits-mlp/.tmp-killed: a partial version") for l in lines)
    assert "digits-mlp/config.pbtxt: does not match the latest version's tensors" in lines
    assert lines[-1] == "4 problem(s) in " + str(repo)


def test_check_finds_embedded_metadata_that_disagrees(exported_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    version_dir = repo / "digits-mlp" / "2"
    meta = json.loads((version_dir / "metadata.json").read_text())
    meta["labels"][0] = "zero"
    (version_dir / "metadata.json").write_text(artifact.dumps(meta))
    proc = run_check(repo)
    assert "digits-mlp/2: model.onnx: embedded metadata differs from metadata.json" in proc.stderr


def test_a_partial_version_is_never_served(exported_repo, tmp_path):
    """A version whose model.onnx was cut short: the service refuses it and serves the one before."""
    from service.metrics import Metrics
    from service.registry import ModelRegistry
    from service.settings import Settings

    repo = tmp_path / "repo"
    shutil.copytree(exported_repo, repo)
    model = repo / "digits-mlp" / "2" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    registry = ModelRegistry(Settings(models=repo), Metrics())
    registry.load_all()
    assert registry.versions("digits-mlp") == [1]
    assert registry.get("digits-mlp").version == 1
    state = [s for s in registry.states() if s.version == 2][0]
    assert state.state == "UNAVAILABLE" and "cut short" in state.reason


def test_export_quantize_dynamic_publishes_or_says_why(trained_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training", "export", str(trained_run), "--name", "digits-mlp",
                           "--models", str(tmp_path / "repo"), "--quantize", "dynamic"], cwd=ROOT,
                          capture_output=True, text=True)
    versions = artifact.list_versions(tmp_path / "repo" / "digits-mlp")
    if proc.returncode == 0:  # faster on this machine: the int8 model is what was published
        assert "quantized:" in proc.stdout and versions == [1]
        meta = artifact.read_metadata(tmp_path / "repo" / "digits-mlp" / "1")
        assert meta["export"]["parity"]["quantization"]["publish"] is True
        ops = {n.op_type for n in onnx.load(tmp_path / "repo" / "digits-mlp" / "1" / "model.onnx").graph.node}
        assert "MatMulInteger" in ops
        load_model(tmp_path / "repo" / "digits-mlp" / "1", device="cpu")
    else:  # refused (slower here, or the accuracy gate): nothing published, and the reason is given
        assert proc.returncode == 3 and "refused" in proc.stderr and versions == []


def test_quantize_refuses_convolutions(tmp_path):
    config = apply_overrides(load_config("digits-cnn"), ["train.epochs=1", "model.channels=[4, 8]",
                                                         "model.hidden_dim=16"])
    fit(config, tmp_path / "cnn", log=lambda _m: None)
    proc = subprocess.run([sys.executable, "-m", "training", "export", str(tmp_path / "cnn"), "--name", "c",
                           "--models", str(tmp_path / "repo"), "--quantize", "dynamic"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 3 and "Conv" in proc.stderr
    assert artifact.list_versions(tmp_path / "repo" / "c") == []


def test_metadata_records_the_preprocessing_before_and_inside_the_graph(exported_repo):
    meta = artifact.read_metadata(exported_repo / "digits-mlp" / "2")
    preprocessing = meta["preprocessing"]
    assert preprocessing["before_graph"][0].startswith("scikit-learn's load_digits() images")
    assert preprocessing["before_graph"][1] == "flatten each image [C, H, W] row by row into 64 values"
    assert "the graph itself does the standardization" in preprocessing["before_graph"][-1]
    assert preprocessing["steps"] == ["standardize each feature with the training split's mean and std"]
    assert preprocessing["input_shapes"] == {
        "input": "a grayscale image of 8x8 pixels, values 0-16, flattened row by row into 64 values"}
    assert "features" not in meta  # images have no feature names
    assert (meta["training"]["dataset"], meta["training"]["dataset_source"]) == ("digits", "bundled")
