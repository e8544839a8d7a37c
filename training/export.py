"""Export a finished run to one self-contained ONNX file, verify it against torch, and publish it atomically.

Verification follows Optimum's order (output names, symbolic dynamic dims, then shapes, then values at
several batch sizes that differ from the export example), plus the test-split metric of the exported model.
Every failure is collected into one report; when any check fails nothing is published.
See ../shared/reference/export-notes.md for the traps these checks exist for.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service import artifact
from training.architectures import get_arch
from training.architectures.layers import OutputHead
from training.trainer import load_trained, prepare

OPSET = 20
EXAMPLE_BATCH = 2  # every dynamic dim >= 2 in the example, or torch.export may freeze it (export-notes trap 2)
PARITY_BATCHES = (1, 3, 64)  # all differ from the example batch
METRIC_TOLERANCE = 0.001  # the exported model's test accuracy must equal torch's within 0.1 points
INPUT_NAME = "input"
OUTPUT_NAMES = {"multiclass": "probabilities", "binary": "probability", "regression": "prediction"}


class ExportError(Exception):
    """Verification failed; `problems` lists every failed check, and nothing was published."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("export verification failed, nothing was published:\n  - " + "\n  - ".join(problems))


@dataclass
class Exported:
    """An exported, verified graph and everything the metadata needs to say about it."""

    model: "onnx.ModelProto"  # noqa: F821 (onnx is imported lazily)
    inputs: list[dict]
    outputs: list[dict]
    parity: dict
    onnx_metrics: dict


def export_graph(head: torch.nn.Module, example: torch.Tensor, output_name: str, dynamo: bool = True):
    """torch -> ONNX ModelProto with a dynamic batch dim, opset 20, weights inside the file."""
    batch = torch.export.Dim("batch")
    # The exporter logs "torchvision is not installed" and its dependencies warn about their own deprecations:
    # noise for our users, silenced for the duration of the call only.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(head, (example,), dynamo=dynamo, external_data=False, opset_version=OPSET,
                                    input_names=[INPUT_NAME], output_names=[output_name],
                                    dynamic_shapes=({0: batch},), verbose=False)
    return program.model_proto


def _graph_dims(value_info) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def verify(model, head: torch.nn.Module, X_test: np.ndarray, y_test: np.ndarray, output_name: str,
           atol: float, torch_accuracy: float) -> tuple[dict, dict, list[str]]:
    """Check an exported graph against the torch model; return (parity report, ONNX metrics, problems)."""
    import onnx
    import onnxruntime as ort
    from onnx.external_data_helper import uses_external_data

    problems: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        problems.append(f"onnx checker: {str(exc)[:300]}")
    if any(uses_external_data(t) for t in model.graph.initializer):
        problems.append("weights are stored outside the file; expected one self-contained model.onnx")
    outputs = [o.name for o in model.graph.output]
    if outputs != [output_name]:
        problems.append(f"output names: expected {[output_name]}, the graph has {outputs}")
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            dims = _graph_dims(value)
            if not dims or not isinstance(dims[0], str):
                problems.append(f"{kind} '{value.name}': batch dim is {dims[:1]}, expected a symbolic name "
                                "(the exporter froze it)")
    report: dict = {"atol": atol, "batches": [], "max_abs_diff": 0.0}
    metrics: dict = {}
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several types for a bad graph
        problems.append(f"ONNX Runtime cannot load the graph: {str(exc)[:300]}")
        return report, metrics, problems
    head.eval()
    for batch in PARITY_BATCHES:
        x = np.resize(X_test, (batch, *X_test.shape[1:])).astype(np.float32)  # cycles rows if too few
        with torch.no_grad():
            expected = head(torch.from_numpy(x)).numpy()
        try:
            got = session.run([output_name], {INPUT_NAME: x})[0]
        except Exception as exc:
            problems.append(f"batch {batch}: ONNX Runtime failed: {str(exc)[:300]}")
            continue
        entry = {"batch": batch, "shape": list(got.shape)}
        if got.shape != expected.shape:
            problems.append(f"batch {batch}: output shape {list(got.shape)}, torch gives {list(expected.shape)}")
        else:
            diff = float(np.max(np.abs(got - expected)))
            entry["max_abs_diff"] = diff
            report["max_abs_diff"] = max(report["max_abs_diff"], diff)
            if not diff <= atol:
                problems.append(f"batch {batch}: max |onnx - torch| = {diff:.3g} exceeds atol {atol:g}")
        report["batches"].append(entry)
    try:
        probs = session.run([output_name], {INPUT_NAME: X_test.astype(np.float32)})[0]
        accuracy = float((probs.argmax(-1) == y_test).mean())
        metrics = {"test_accuracy": accuracy}
        if abs(accuracy - torch_accuracy) > METRIC_TOLERANCE:
            problems.append(f"test accuracy: ONNX {accuracy:.4f}, torch {torch_accuracy:.4f} "
                            f"(tolerance {METRIC_TOLERANCE})")
    except Exception as exc:
        problems.append(f"test split: ONNX Runtime failed: {str(exc)[:300]}")
    return report, metrics, problems


def export_run(run_dir: Path) -> tuple[Exported, dict, dict]:
    """Export and verify the best model of a run; return (exported, run config, run summary)."""
    resolved, summary, network = load_trained(run_dir)
    spec = get_arch(resolved["arch"])
    task = resolved["task"]
    head = OutputHead(network, task).eval()
    output_name = OUTPUT_NAMES[task]
    data, split = prepare(_run_config(resolved))
    X_test, y_test = data.X[split.test], data.y[split.test]
    model = export_graph(head, torch.from_numpy(X_test[:EXAMPLE_BATCH]), output_name, spec.dynamo)
    parity, onnx_metrics, problems = verify(model, head, X_test, y_test, output_name, spec.atol,
                                            summary["metrics"]["test_accuracy"])
    if problems:
        raise ExportError(problems)
    features = int(X_test.shape[1])
    return (Exported(model,
                     inputs=[{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, features]}],
                     outputs=[{"name": output_name, "datatype": "FP32", "shape": [-1, len(resolved["labels"])]}],
                     parity=parity, onnx_metrics=onnx_metrics),
            resolved, summary)


def _run_config(resolved: dict):
    from training.config import RunConfig

    return RunConfig.from_dict({k: v for k, v in resolved.items()
                                if k not in ("network", "task", "labels", "config_sha256")})


def build_metadata(exported: Exported, resolved: dict, summary: dict, name: str, version: int) -> dict:
    """The artifact metadata of one version (the `files` section is added when the bytes exist)."""
    import onnx
    import onnxruntime

    return {
        "schema_version": artifact.SCHEMA_VERSION,
        "name": name,
        "version": version,
        "architecture": resolved["arch"],
        "task": resolved["task"],
        "inputs": exported.inputs,
        "outputs": exported.outputs,
        "labels": resolved["labels"],
        "preprocessing": {
            "in_graph": True,
            "input": "raw features in the dataset's own units (digits: 64 pixel values, 0-16)",
            "steps": [{"op": "standardize", "stats": "per-feature mean and std of the training split"}],
            "output": {"multiclass": "softmax", "binary": "sigmoid"}.get(resolved["task"], "identity"),
        },
        "training": {
            "dataset": summary["dataset"],
            "dataset_description": summary["dataset_description"],
            "split": summary["split"],
            "seed": summary["seed"],
            "metrics": {**summary["metrics"], **{f"onnx_{k}": v for k, v in exported.onnx_metrics.items()}},
            "hyperparameters": {k: resolved[k] for k in ("model", "optimizer", "train", "network")},
            "config_sha256": resolved["config_sha256"],
            "best_epoch": summary["best_epoch"],
            "library_versions": summary["library_versions"],
            "created_at": summary["created_at"],
        },
        "export": {
            "opset": OPSET,
            "exporter": "torch.onnx dynamo" if get_arch(resolved["arch"]).dynamo else "torch.onnx torchscript",
            "library_versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                                 "onnxruntime": onnxruntime.__version__},
            "parity": exported.parity,
        },
    }


def publish(exported: Exported, resolved: dict, summary: dict, name: str, models_dir: Path) -> tuple[int, Path]:
    """Publish the next version of `name` into `models_dir` (written beside, then renamed into place)."""
    import onnx

    def build(version: int) -> dict[str, bytes]:
        meta = build_metadata(exported, resolved, summary, name, version)
        model = exported.model
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, {artifact.METADATA_PROP: json.dumps(meta, sort_keys=True)})
        model.producer_name = "nnserve"
        data = model.SerializeToString()
        meta["files"] = {artifact.MODEL_FILENAME: {"sha256": artifact.sha256_bytes(data), "bytes": len(data)}}
        artifact.check_metadata(meta, f"{name} version {version}")
        return {artifact.MODEL_FILENAME: data, artifact.METADATA_FILENAME: artifact.dumps(meta).encode()}

    return artifact.publish_version(models_dir, name, build)
