"""Export a finished run to one self-contained ONNX file, verify it against torch, and publish it atomically.

Verification follows Optimum's order (output names, symbolic dynamic dims, then shapes, then values at
shapes that differ from the export example), plus the test-split metric of the exported model, scored by the
same function that scored torch. Every failure is collected into one report; when any check fails nothing is
published. See ../shared/reference/export-notes.md for the traps these checks exist for.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from service import artifact
from training.architectures import get_arch, resolve_hyper
from training.tasks import TASK_SPECS, ServedModel, higher_is_better
from training.trainer import Prepared, config_of, load_trained, prepare, test_metrics

OPSET = 20
EXAMPLE_BATCH = 2  # every dynamic dim >= 2 in the example, or torch.export may freeze it (export-notes trap 2)
PARITY_BATCHES = (1, 3, 5, 33, 64)  # all differ from the example batch
METRIC_TOLERANCE = 0.001  # exported metric = torch's within 0.1 points (relative 0.1 % for errors in data units)
DTYPES = {"FP32": np.float32, "INT64": np.int64}


class SignatureChanged(ValueError):
    """Publishing was refused: the new version's inputs or outputs differ from the latest published version's, which
    clients of the model are written against; `changes` lists each difference. Nothing was published. A ValueError,
    so that a command that does not catch it still ends with its one-line message."""

    def __init__(self, name: str, version: int, latest: int, changes: list[str]):
        self.changes = changes
        super().__init__(f"{name}: not published: version {version} would change the signature of version {latest}, "
                         f"which clients of '{name}' rely on: {'; '.join(changes)} (publish it under another name, "
                         "or use --force to publish anyway)")


class ExportError(Exception):
    """Verification failed; `problems` lists every failed check, and nothing was published."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("export verification failed, nothing was published:\n  - " + "\n  - ".join(problems))


@dataclass
class ExportPlan:
    """What to export: the served module, its tensors (shape -1 = dynamic), example and parity inputs."""

    module: torch.nn.Module
    inputs: list[dict]
    outputs: list[dict]
    example: tuple[np.ndarray, ...]
    parity_inputs: list[tuple[np.ndarray, ...]]
    dynamo: bool
    atol: float
    clear_rnn_cache: bool = False
    task_params: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)  # name, source, description of the data it was trained on
    features: list[str] | None = None  # a table's input columns, in order
    before_graph: list[str] = field(default_factory=list)  # what a client does to raw data, as sentences
    input_shapes: dict[str, str] = field(default_factory=dict)  # input name -> what one sample of it holds


def _data_record(prepared: Prepared, in_shape: list[int]) -> dict:
    """What the plan records about the data: its name, features, the steps before the graph, what an input holds."""
    data, form = prepared.data, prepared.form
    record = {"dataset": {"name": data.name, "source": data.source, "description": data.description},
              "before_graph": list(data.loading)}
    sample = data.sample or "one sample"
    if data.kind == "series":
        record["input_shapes"] = {"input": f"past {sample}, oldest first (trained on windows of {prepared.window}; "
                                           f"forecasts the next {prepared.horizon})"}
        record["before_graph"].append(f"take the last values of the series, oldest first, as one row [T] (the model "
                                      f"was trained with T = {prepared.window})")
        return record
    if data.kind == "image" and form == "table":
        size = int(np.prod(data.X.shape[1:]))
        record["before_graph"].append(f"flatten each image [C, H, W] row by row into {size} values")
        sample += f", flattened row by row into {size} values"
    elif data.kind == "image" and form == "sequence":
        c, h, w = data.X.shape[1:]
        record["before_graph"].append(f"each image's {h} rows become {h} steps of C*W = {c * w} values: "
                                      f"[C, H, W] -> [H, C*W]")
        sample += f", its {h} rows as {h} steps of {c * w} values"
    elif data.kind == "image":
        sample += ", channels first [C, H, W]"
    if data.features is not None and form == "table" and data.kind == "table" and in_shape[1:] == [len(data.features)]:
        record["features"] = list(data.features)
        sample += ", in the order of `features`"
    record["input_shapes"] = {"input": sample}
    return record


def _resize(X: np.ndarray, batch: int, steps: int | None = None) -> np.ndarray:
    """Rows (and time steps) of real data, repeated cyclically when more are needed than exist."""
    if steps is not None:
        X = np.concatenate([X] * (steps // X.shape[1] + 1), axis=1)[:, -steps:] if steps > X.shape[1] \
            else X[:, -steps:]
    return np.ascontiguousarray(np.resize(X, (batch, *X.shape[1:])), dtype=X.dtype)


def plan_export(resolved: dict, summary: dict, model: torch.nn.Module, prepared: Prepared) -> ExportPlan:
    """The export of one run: tensor names and shapes per task, and the inputs to check parity with."""
    task, arch = prepared.task, resolved["arch"]
    spec = get_arch(arch)
    names = TASK_SPECS[task].outputs
    X_test = prepared.X["test"]
    if task == "generation":
        hyper = resolved["network"]
        rng = np.random.default_rng(0)

        def gan_inputs(batch: int) -> tuple[np.ndarray, np.ndarray]:
            return (rng.standard_normal((batch, hyper["latent_dim"])).astype(np.float32),
                    (np.arange(batch) % hyper["num_classes"]).astype(np.int64))

        image = [-1, hyper["channels"], hyper["image_size"], hyper["image_size"]]
        data = prepared.data
        return ExportPlan(model, [{"name": "latent", "datatype": "FP32", "shape": [-1, hyper["latent_dim"]]},
                                  {"name": "label", "datatype": "INT64", "shape": [-1]}],
                          [{"name": names[0], "datatype": "FP32", "shape": image}],
                          gan_inputs(EXAMPLE_BATCH), [gan_inputs(b) for b in PARITY_BATCHES], True, spec.atol,
                          task_params={"latent_dim": hyper["latent_dim"], "output_range": [0.0, 1.0],
                                       "classes_input": "label", "noise_input": "latent"},
                          dataset={"name": data.name, "source": data.source, "description": data.description},
                          input_shapes={"latent": f"a standard-normal latent vector of {hyper['latent_dim']} values",
                                        "label": f"the class index, 0 to {hyper['num_classes'] - 1} (see `labels`)"})
    sample = list(X_test.shape[1:])
    in_shape = [-1, *sample]
    parity = [(_resize(X_test, b),) for b in PARITY_BATCHES]
    if spec.dynamic_sequence:
        in_shape[1] = -1  # [B, T] for a series, [B, T, F] for tokens
        steps = sample[0]
        parity += [(_resize(X_test, 4, t),) for t in (max(2, steps // 2), steps + 5)]
    batch_only = [-1]
    if task == "multiclass":
        outputs = [batch_only + [len(prepared.labels)]]
    elif task in ("binary", "regression"):
        outputs = [batch_only]
    elif task == "forecasting":
        outputs = [batch_only + [prepared.horizon]]
    else:  # anomaly: reconstruction, score, embedding
        outputs = [in_shape, batch_only, batch_only + [resolved["network"]["latent_dim"]]]
    params: dict = {}
    if arch == "transformer":  # its position table has max_len rows: longer inputs cannot run
        params["max_sequence_length"] = resolved["network"]["max_len"]
    if task == "binary":
        params["positive_label"] = prepared.labels[1]
    elif task == "forecasting":
        params.update(window=prepared.window, horizon=prepared.horizon, season=prepared.data.season)
    elif task == "anomaly":
        params.update(threshold=summary["metrics"]["test_threshold"], quantile=resolved["eval"].get("quantile", 0.99),
                      score="mean squared reconstruction error of the standardized input")
    return ExportPlan(ServedModel(model, task).eval(),
                      [{"name": "input", "datatype": "FP32", "shape": in_shape}],
                      [{"name": n, "datatype": "FP32", "shape": s} for n, s in zip(names, outputs)],
                      (_resize(X_test, EXAMPLE_BATCH),), parity, spec.dynamo, spec.atol,
                      clear_rnn_cache=arch in ("lstm", "gru"), task_params=params,
                      **_data_record(prepared, in_shape))


def export_graph(plan: ExportPlan):
    """torch -> ONNX ModelProto with the plan's dynamic dims, opset 20, weights inside the file."""
    import onnx

    example = tuple(torch.from_numpy(x) for x in plan.example)
    input_names = [t["name"] for t in plan.inputs]
    output_names = [t["name"] for t in plan.outputs]
    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    dynamic = [{i: ("batch" if i == 0 else "sequence") for i, d in enumerate(t["shape"]) if d == -1}
               for t in plan.inputs]
    if plan.clear_rnn_cache:  # export-notes trap 4: a stale dispatch cache freezes the sequence length
        torch.ops.aten.lstm.input._dispatch_cache.clear()
        torch.ops.aten.gru.input._dispatch_cache.clear()
    # The exporter logs "torchvision is not installed" and its dependencies warn about their own deprecations:
    # noise for our users, silenced for the duration of the call only.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if plan.dynamo:
            program = torch.onnx.export(plan.module, example, dynamo=True, external_data=False, opset_version=OPSET,
                                        input_names=input_names, output_names=output_names, verbose=False,
                                        dynamic_shapes=tuple({i: dims[n] for i, n in d.items()} for d in dynamic))
            return without_stack_traces(program.model_proto)
        import io

        buffer = io.BytesIO()  # export-notes trap 3: the Elman RNN keeps a dynamic sequence only this way
        axes = {name: d for name, d in zip(input_names, dynamic)}
        axes.update({name: {0: "batch"} for name in output_names})
        torch.onnx.export(plan.module, example, buffer, dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=axes)
        return onnx.load_from_string(buffer.getvalue())


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # the exporter's per-node Python stack: absolute source paths


def without_stack_traces(model):
    """The model with the exporter's per-node stack traces removed: they name the author's source files by their
    absolute paths, which a published file must not hold. The module names and scopes beside them stay."""

    def strip(graph) -> None:
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    strip(attribute.g)
                for sub in attribute.graphs:
                    strip(sub)

    strip(model.graph)
    for function in model.functions:
        strip(function)
    return model


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


def verify(model, plan: ExportPlan) -> tuple[dict, object, list[str]]:
    """Check an exported graph against the torch module; return (parity report, ORT session, problems)."""
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


def predictor_metrics(predict: Callable, config, prepared: Prepared, judge_dir: Path) -> dict:
    """The run's test metrics through any predictor (an ONNX Runtime session here), as torch was scored."""
    if prepared.task != "generation":
        return test_metrics(prepared.task, predict, prepared, config.eval, config.seed)
    from training.gan import evaluation_inputs, generation_metrics, train_judge, within_class_distance

    pixel_max = float(prepared.data.X.max())
    judge = train_judge(config, judge_dir, log=lambda _m: None)  # reuses a judge already in judge_dir
    reference = within_class_distance(prepared.X["train"] / pixel_max, prepared.y["train"])
    hyper = resolve_hyper("gan", config.model, list(prepared.X["train"].shape[1:]), len(prepared.labels))
    inputs = evaluation_inputs(hyper["num_classes"], hyper["latent_dim"], int(config.eval.get("samples_per_class", 100)),
                               config.seed)
    return generation_metrics(predict, judge, *inputs, pixel_max, reference)


@dataclass
class Exported:
    """An exported, verified graph and what the metadata says about it."""

    model: object  # onnx.ModelProto (onnx is imported lazily)
    plan: ExportPlan
    parity: dict
    onnx_metrics: dict


def export_run(run_dir: Path) -> tuple[Exported, dict, dict]:
    """Export and verify the best model of a run; return (exported, run config, run summary)."""
    run_dir = Path(run_dir)
    resolved, summary, model = load_trained(run_dir)
    prepared = prepare(config_of(resolved))
    plan = plan_export(resolved, summary, model, prepared)
    graph = export_graph(plan)
    parity, session, problems = verify(graph, plan)
    onnx_metrics: dict = {}
    if session is not None:
        onnx_metrics = predictor_metrics(ort_predictor(session, plan), config_of(resolved), prepared, run_dir)
        metric = summary["headline_metric"]
        ours, theirs = onnx_metrics[metric], summary["metrics"][f"test_{metric}"]
        if not metric_matches(metric, ours, theirs):
            problems.append(f"test {metric}: ONNX {ours:.4f}, torch {theirs:.4f} (tolerance: 0.1 points)")
    if problems:
        raise ExportError(problems)
    return Exported(graph, plan, parity, onnx_metrics), resolved, summary


def quantize(exported: Exported, resolved: dict, run_dir: Path) -> tuple[Exported | None, list[str], dict]:
    """Dynamic int8 quantization, gated on accuracy and on speed measured side by side (training.quantize).

    Returns (the quantized export to publish instead of the float one, or None; the reasons it was refused;
    the quantization report). Parity with torch is the float graph's; the quantized graph is held to the
    accuracy gate instead, since int8 weights cannot meet atol 1e-5.
    """
    import onnx
    import onnxruntime as ort

    from training.quantize import decide

    prepared = prepare(config_of(resolved))
    metric = TASK_SPECS[prepared.task].metric
    plan = exported.plan

    def evaluate(model_bytes: bytes) -> float:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return predictor_metrics(ort_predictor(session, plan), config_of(resolved), prepared, run_dir)[metric]

    def make_feed(batch: int) -> dict[str, np.ndarray]:
        return {plan.inputs[0]["name"]: _resize(prepared.X["test"], batch)}

    decision, data = decide(exported.model, evaluate, make_feed, higher_is_better(metric))
    if not decision.publish:
        return None, decision.reasons, decision.report
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    metrics = predictor_metrics(ort_predictor(session, plan), config_of(resolved), prepared, run_dir)
    parity = {**exported.parity, "quantization": decision.report}
    return Exported(onnx.load_from_string(data), plan, parity, metrics), [], decision.report


PREPROCESSING = {  # inside the graph: a client sends values without these
    "table": "standardize each feature with the training split's mean and std",
    "image": "standardize each channel with the training split's mean and std",
    "sequence": "standardize each token feature with the training split's mean and std",
    "series": "scale the window relative to its last value: (x - x[-1]) / std of the training steps",
}
IN_GRAPH_NOTE = ("nothing more: the graph itself does the {what} (send values that are not {done}); "
                 "see preprocessing.steps")
OUTPUTS = {
    "multiclass": "softmax over the classes",
    "binary": "sigmoid: the probability of the positive class",
    "regression": "the value in the target's units (inverse scaling in the graph)",
    "forecasting": "the next values in the series' units (inverse scaling in the graph)",
    "anomaly": "reconstruction in the input's units, anomaly score, encoder embedding",
    "generation": "image in [0, 1]",
}


def build_metadata(exported: Exported, resolved: dict, summary: dict, name: str, version: int) -> dict:
    """The artifact metadata of one version (the `files` section is added when the bytes exist).

    The data is named as the plan records it (the file's or folder's own name, never a local path); `features`
    names a table's inputs in order; `preprocessing.before_graph` lists what a client does to raw data and
    `preprocessing.steps` what the graph itself does, so a client can reproduce the whole chain."""
    import onnx
    import onnxruntime

    task = resolved["resolved_task"]
    form = "series" if resolved["series"] else resolved["form"]
    metrics = {**summary["metrics"], **{f"onnx_test_{k}": v for k, v in exported.onnx_metrics.items()}}
    plan = exported.plan
    dataset = plan.dataset or {"name": summary["dataset"], "source": summary.get("dataset_source", "bundled"),
                               "description": summary["dataset_description"]}
    return {
        "schema_version": artifact.SCHEMA_VERSION,
        "name": name,
        "version": version,
        "architecture": resolved["arch"],
        "task": task,
        "inputs": plan.inputs,
        "outputs": plan.outputs,
        **({"labels": resolved["labels"]} if resolved["labels"] else {}),
        **({"features": plan.features} if plan.features else {}),
        "task_params": plan.task_params,
        "preprocessing": {
            "in_graph": True,
            "input": "raw values in the dataset's own units" if task != "generation"
                     else "a standard-normal latent vector and a class index",
            "before_graph": plan.before_graph + ([IN_GRAPH_NOTE.format(
                what="scaling" if form == "series" else "standardization",
                done="scaled" if form == "series" else "standardized")] if plan.before_graph else []),
            "steps": [] if task == "generation" else [PREPROCESSING[form]],
            "input_shapes": plan.input_shapes,
            "output": OUTPUTS[task],
        },
        "training": {
            "dataset": dataset["name"],
            "dataset_source": dataset["source"],
            "dataset_description": dataset["description"],
            "split": summary["split"],
            "seed": summary["seed"],
            "headline_metric": summary["headline_metric"],
            "metrics": metrics,
            "baseline": summary.get("baseline"),
            "hyperparameters": {k: resolved[k] for k in ("model", "optimizer", "schedule", "train", "data", "eval",
                                                         "network")},
            "config_sha256": resolved["config_sha256"],
            "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"],
            "train_seconds": summary["train_seconds"],
            "library_versions": summary["library_versions"],
            "created_at": summary["created_at"],
        },
        "export": {
            "opset": OPSET,
            "exporter": "torch.onnx dynamo" if plan.dynamo else "torch.onnx torchscript",
            "library_versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                                 "onnxruntime": onnxruntime.__version__},
            "parity": exported.parity,
        },
    }


def _signature(meta: dict) -> dict:
    """What a client of a model is written against: each input's and output's datatype and dims (config.pbtxt's
    dims: the shape without the batch dim), and a table's feature order."""
    return {"inputs": {t["name"]: (t["datatype"], list(t["shape"][1:])) for t in meta["inputs"]},
            "outputs": {t["name"]: (t["datatype"], list(t["shape"][1:])) for t in meta["outputs"]},
            "features": meta.get("features")}


def published_signature(version_dir: Path) -> dict | None:
    """The signature of a published version: from its metadata.json, or, for a model from elsewhere, as the service
    loads it (config.pbtxt auto-completed from the graph); None when the version cannot be served at all."""
    try:
        return _signature(artifact.read_metadata(version_dir))
    except artifact.MetadataError:
        pass
    from service.runtime import LoadError, load_model

    try:
        model = load_model(version_dir, device="cpu")
    except LoadError:
        return None
    return _signature({"inputs": model.input_specs, "outputs": model.output_specs})


def signature_changes(old: dict, new: dict) -> list[str]:
    """Each difference between two signatures, e.g. "input 'input': dims [1, 8, 8] -> [1, 32, 32]"."""
    changes = []
    for kind in ("input", "output"):
        before, after = old[f"{kind}s"], new[f"{kind}s"]
        changes += [f"{kind} '{n}' removed" for n in before if n not in after]
        changes += [f"{kind} '{n}' added ({after[n][0]}, dims {after[n][1]})" for n in after if n not in before]
        for n in (n for n in before if n in after):
            (old_type, old_dims), (new_type, new_dims) = before[n], after[n]
            if old_type != new_type:
                changes.append(f"{kind} '{n}': datatype {old_type} -> {new_type}")
            if old_dims != new_dims:
                changes.append(f"{kind} '{n}': dims {old_dims} -> {new_dims}")
    if old["features"] is not None and new["features"] is not None and old["features"] != new["features"]:
        changes.append(f"features: {_names(old['features'])} -> {_names(new['features'])}")
    return changes


def _names(names: list[str], limit: int = 12) -> str:
    return str(names) if len(names) <= limit else f"{names[:limit]} and {len(names) - limit} more"


def publish(exported: Exported, resolved: dict, summary: dict, name: str, models_dir: Path,
            run_dir: Path | None = None, force: bool = False,
            log: Callable[[str], None] = print) -> tuple[int, Path]:
    """Publish the next version of `name` into `models_dir` (written beside, then renamed into place).

    The version holds model.onnx, metadata.json, a model card and the run's plots; the model's folder gets
    Triton's config.pbtxt for the new version's tensors. A version whose signature (input and output names,
    datatypes and dims, and a table's feature order) differs from the latest published version's raises
    SignatureChanged and publishes nothing, unless `force`, when the changes are logged and it is published.
    """
    import onnx

    from training.repository import CARD_FILENAME, TRITON_CONFIG, model_card, triton_config

    plots = sorted((Path(run_dir) / "plots").glob("*.png")) if run_dir else []
    metas: dict[int, dict] = {}
    model_dir = Path(models_dir) / name

    def build(version: int) -> dict[str, bytes]:
        meta = build_metadata(exported, resolved, summary, name, version)
        earlier = [v for v in artifact.list_versions(model_dir) if v < version]  # under the publish lock
        old = published_signature(model_dir / str(earlier[-1])) if earlier else None
        changes = signature_changes(old, _signature(meta)) if old is not None else []
        if changes and not force:
            raise SignatureChanged(name, version, earlier[-1], changes)
        if changes:
            log(f"{name}: publishing version {version} although its signature differs from version {earlier[-1]} "
                f"(--force): {'; '.join(changes)}")
        model = exported.model
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, {artifact.METADATA_PROP: json.dumps(meta, sort_keys=True)})
        model.producer_name = "nnserve"
        files = {artifact.MODEL_FILENAME: model.SerializeToString(),
                 **{f"plots/{p.name}": p.read_bytes() for p in plots}}
        files[CARD_FILENAME] = model_card(meta, [f"plots/{p.name}" for p in plots], list(exported.plan.example)).encode()
        meta["files"] = artifact.file_entries(files)
        artifact.check_metadata(meta, f"{name} version {version}")
        metas[version] = meta
        return {**files, artifact.METADATA_FILENAME: artifact.dumps(meta).encode()}

    return artifact.publish_version(models_dir, name, build,
                                    lambda version: {TRITON_CONFIG: triton_config(metas[version]).encode()})
