"""The artifact contract: the validator names the wrong field; publishing is atomic and numbered."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from service import artifact

VALID = {
    "schema_version": 1, "name": "tiny", "version": 1, "architecture": "mlp", "task": "multiclass",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    "labels": ["a", "b", "c"],
    "preprocessing": {"in_graph": True}, "export": {"opset": 20},
    "training": {"dataset": "x", "split": {}, "seed": 0, "metrics": {"test_accuracy": 0.9},
                 "hyperparameters": {}, "library_versions": {}, "created_at": "2026-01-01T00:00:00+00:00"},
}


def with_change(path: str, value) -> dict:
    meta = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    target = meta
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is KeyError:
        del target[leaf]
    else:
        target[leaf] = value
    return meta


def test_valid_metadata_has_no_problems():
    assert artifact.validate_metadata(VALID) == []


@pytest.mark.parametrize("path, value, fragment", [
    ("schema_version", 99, "schema_version: expected 1, got 99"),
    ("name", "../etc", "name: expected letters"),
    ("version", 0, "version: expected a positive integer, got 0"),
    ("version", "1", "version: expected a positive integer, got '1'"),
    ("task", "clustering", "task: expected one of"),
    ("inputs", [], "inputs: expected a non-empty list"),
    ("inputs.0.datatype", "float", "inputs[0].datatype: expected one of"),
    ("inputs.0.shape", [-1, 0], "inputs[0].shape: expected a non-empty list of positive ints or -1"),
    ("outputs.0.name", "", "outputs[0].name: expected a non-empty string"),
    ("labels", KeyError, "labels: required for task 'multiclass'"),
    ("labels", [1, 2], "labels: expected a list of strings"),
    ("training.seed", KeyError, "training.seed: required field is missing"),
    ("training.metrics", {"accuracy": float("nan")}, "training.metrics: expected an object of finite numbers"),
    ("architecture", KeyError, "architecture: required field is missing"),
])
def test_validator_names_the_wrong_field(path, value, fragment):
    problems = artifact.validate_metadata(with_change(path, value))
    assert any(fragment in p for p in problems), problems


def test_validator_reports_every_problem():
    meta = with_change("task", "nope")
    meta["version"] = -3
    with pytest.raises(artifact.MetadataError) as err:
        artifact.check_metadata(meta)
    assert len(err.value.problems) == 2 and "task" in str(err.value) and "version" in str(err.value)


@pytest.mark.parametrize("name, ok", [("digits-mlp", True), ("a.b_c-1", True), ("..", False), ("a/b", False),
                                      (".hidden", False), ("a\x00b", False), ("x" * 129, False), ("", False)])
def test_model_names(name, ok):
    assert artifact.is_valid_name(name) is ok


@pytest.mark.parametrize("version, ok", [("1", True), ("42", True), ("0", False), ("01", False), ("-1", False),
                                         ("1.0", False), ("", False)])
def test_versions(version, ok):
    assert artifact.is_valid_version(version) is ok


def build_files(version: int) -> dict[str, bytes]:
    model = b"onnx bytes of version %d" % version
    meta = {**copy.deepcopy(VALID), "version": version,
            "files": {"model.onnx": {"sha256": artifact.sha256_bytes(model), "bytes": len(model)}}}
    return {"model.onnx": model, "metadata.json": artifact.dumps(meta).encode()}


def test_publish_numbers_versions_and_reads_back(tmp_path):
    assert [artifact.publish_version(tmp_path, "tiny", build_files)[0] for _ in range(3)] == [1, 2, 3]
    assert artifact.list_versions(tmp_path / "tiny") == [1, 2, 3]
    meta = artifact.read_metadata(tmp_path / "tiny" / "2")
    assert meta["version"] == 2
    assert artifact.verify_model_bytes(meta, (tmp_path / "tiny" / "2" / "model.onnx").read_bytes()) == []
    assert artifact.verify_model_bytes(meta, b"onnx bytes of version 2"[:-1]) != []


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        artifact.publish_version(tmp_path, "tiny", build_files)[0])) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3, 4, 5, 6]


def test_failed_build_leaves_nothing_visible(tmp_path):
    def broken(version):
        files = build_files(version)
        del files["metadata.json"]
        return files

    with pytest.raises(ValueError, match="metadata.json"):
        artifact.publish_version(tmp_path, "tiny", broken)
    assert artifact.list_versions(tmp_path / "tiny") == []
    assert [p.name for p in (tmp_path / "tiny").iterdir() if p.name.startswith(artifact.TMP_PREFIX)] == []


def test_leftover_tmp_folder_is_ignored_then_cleaned(tmp_path):
    stale = tmp_path / "tiny" / f"{artifact.TMP_PREFIX}killed"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    assert artifact.list_versions(tmp_path / "tiny") == []
    assert artifact.list_models(tmp_path) == ["tiny"]
    assert artifact.publish_version(tmp_path, "tiny", build_files)[0] == 1
    assert not stale.exists()


def test_read_metadata_takes_the_folder_as_the_version_and_the_recorded_one_as_provenance(tmp_path):
    artifact.publish_version(tmp_path, "tiny", build_files)
    os.rename(tmp_path / "tiny" / "1", tmp_path / "tiny" / "7")  # a version folder renamed by hand, as in Triton
    assert artifact.read_metadata(tmp_path / "tiny" / "7")["version"] == 1
    (tmp_path / "tiny" / "7" / "metadata.json").write_text("{not json")
    with pytest.raises(artifact.MetadataError, match="not valid JSON"):
        artifact.read_metadata(tmp_path / "tiny" / "7")


def test_canonical_dump_is_stable():
    assert artifact.dumps(VALID) == artifact.dumps(json.loads(artifact.dumps(VALID)))


def test_a_publisher_killed_mid_write_leaves_no_version_and_the_next_publish_succeeds(copy_repo, tmp_path):
    """SIGKILL a real publishing process while it writes, then: no partial version is visible to the repository or
    to a registry loading it, the lock died with the process, and the next publish gets the next number."""
    from service.metrics import Metrics
    from service.registry import ModelRegistry
    from service.settings import Settings
    from tests.conftest import ROOT, publish_copy

    repo = copy_repo()
    model_dir = repo / "digits-mlp"
    script = ("import sys; from pathlib import Path; from tests.conftest import publish_copy; "
              "publish_copy(Path(sys.argv[1]), extra={'plots/large.bin': bytes(400_000_000)})")
    proc = subprocess.Popen([sys.executable, "-c", script, str(repo)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # kill once it is writing its files
        if any(p.is_file() for d in model_dir.glob(f"{artifact.TMP_PREFIX}*") for p in d.rglob("*")):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the publisher finished before it could be killed mid-write"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(model_dir.glob(f"{artifact.TMP_PREFIX}*")), "nothing half-written to prove invisible"
    assert artifact.list_versions(model_dir) == [1]
    registry = ModelRegistry(Settings(models=repo, poll_seconds=0, background_load=False), Metrics())
    registry.load_all()
    assert registry.is_ready() and registry.versions("digits-mlp") == [1]
    assert [e for e in registry.index() if e["name"] == "digits-mlp"] == [
        {"name": "digits-mlp", "version": "1", "state": "READY", "reason": ""}]
    assert publish_copy(repo) == 2  # the lock was released by the kill; the leftover is cleaned
    assert not list(model_dir.glob(f"{artifact.TMP_PREFIX}*"))
    registry.reconcile("digits-mlp")
    assert registry.versions("digits-mlp") == [1, 2]
