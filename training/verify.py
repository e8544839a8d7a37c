"""Verification of an exported graph against its torch module, in Optimum's order: output names, symbolic dynamic
dims, then shapes, then values at shapes that differ from the export example. Problems are collected, not raised.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from training.tasks import higher_is_better

METRIC_TOLERANCE = 0.001  # exported metric = torch's within 0.1 points (relative 0.1 % for errors in data units)


def _graph_dims(value_info) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def ort_predictor(session, plan) -> Callable:
    """numpy inputs in the plan's (or metadata's) input order -> outputs (a tuple when there are several)."""
    names = [t["name"] for t in plan.inputs]
    outputs = [t["name"] for t in plan.outputs]

    def predict(*arrays: np.ndarray):
        values = session.run(outputs, dict(zip(names, arrays)))
        return tuple(values) if len(values) > 1 else values[0]

    return predict


def torch_outputs(module: torch.nn.Module, arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(a) for a in arrays))
    return [o.numpy() for o in out] if isinstance(out, tuple) else [out.numpy()]


def _graph_problems(model, plan) -> list[str]:
    """The checker's verdict, weights inside the file, output names, and the dynamic dims left symbolic."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    problems: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        problems.append(f"onnx checker: {str(exc)[:300]}")
    if any(uses_external_data(t) for t in model.graph.initializer):
        problems.append("weights are stored outside the file; expected one self-contained model.onnx")
    expected = [t["name"] for t in plan.outputs]
    got = [o.name for o in model.graph.output]
    if got != expected:
        problems.append(f"output names: expected {expected}, the graph has {got}")
    for kind, specs, values in (("input", plan.inputs, model.graph.input), ("output", plan.outputs, model.graph.output)):
        for spec, value in zip(specs, values):
            dims = _graph_dims(value)
            for axis, want in enumerate(spec["shape"]):
                if want == -1 and (axis >= len(dims) or not isinstance(dims[axis], str)):
                    problems.append(f"{kind} '{value.name}': dim {axis} is {dims[axis] if axis < len(dims) else None},"
                                    " expected a symbolic name (the exporter froze it)")
    return problems


def verify(model, plan) -> tuple[dict, object, list[str]]:
    """Check an exported graph against the torch module of `plan` (an export.ExportPlan); return (parity report,
    ORT session, problems)."""
    import onnxruntime as ort

    problems = _graph_problems(model, plan)
    report: dict = {"atol": plan.atol, "rule": "|onnx - torch| <= atol * max(1, |torch|)", "checks": [],
                    "max_abs_diff": 0.0}
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several types for a bad graph
        problems.append(f"ONNX Runtime cannot load the graph: {str(exc)[:300]}")
        return report, None, problems
    predict = ort_predictor(session, plan)
    plan.module.eval()
    for arrays in plan.parity_inputs:
        shapes = [list(a.shape) for a in arrays]
        try:
            got_out = predict(*arrays)
        except Exception as exc:
            problems.append(f"inputs {shapes}: ONNX Runtime failed: {str(exc)[:300]}")
            continue
        got_out = list(got_out) if isinstance(got_out, tuple) else [got_out]
        entry = {"input_shapes": shapes, "max_abs_diff": 0.0}
        for spec, ours, theirs in zip(plan.outputs, got_out, torch_outputs(plan.module, arrays)):
            if ours.shape != theirs.shape:
                problems.append(f"inputs {shapes}: output '{spec['name']}' has shape {list(ours.shape)}, "
                                f"torch gives {list(theirs.shape)}")
                continue
            diff = np.abs(ours.astype(np.float64) - theirs)
            worst = float(diff.max()) if diff.size else 0.0
            # Outputs in data units (ppm, a disease score) reach the hundreds, where float32 itself only resolves
            # about 1e-5: compare relative to the value above 1, exactly as atol at or below 1.
            scaled = float((diff / np.maximum(1.0, np.abs(theirs))).max()) if diff.size else 0.0
            entry["max_abs_diff"] = max(entry["max_abs_diff"], worst)
            entry["max_scaled_diff"] = max(entry.get("max_scaled_diff", 0.0), scaled)
            if not scaled <= plan.atol:
                problems.append(f"inputs {shapes}: output '{spec['name']}' max |onnx - torch| / max(1, |torch|) = "
                                f"{scaled:.3g} exceeds atol {plan.atol:g}")
        report["max_abs_diff"] = max(report["max_abs_diff"], entry["max_abs_diff"])
        report["checks"].append(entry)
    return report, session, problems


def metric_matches(metric: str, onnx_value: float, torch_value: float) -> bool:
    tolerance = METRIC_TOLERANCE if higher_is_better(metric) else METRIC_TOLERANCE * max(abs(torch_value), 1e-12)
    return abs(onnx_value - torch_value) <= tolerance


