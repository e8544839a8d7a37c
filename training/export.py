"""Export a finished run to one self-contained ONNX file and verify it against torch (training.verify).

The plan of an export comes from the run's task (training.tasks: output names and shapes, task parameters) and
its architecture's export facts (training.architectures.onnx_config: inputs, dynamic axes, exporter, tolerance).
Every failure is collected into one report, and nothing is published when any check fails (training.publish
publishes).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from training.architectures import get_arch
from training.architectures.onnx_config import resize
from training.prepare import Prepared, prepare
from training.runs import Resolved, Summary, config_of, load_trained
from training.tasks import get_task, higher_is_better
from training.trainer import train_judge
from training.verify import metric_matches, ort_predictor, verify

OPSET = 20


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
    sequence: dict | None = None  # a step graph's START control and states (training.stream.sequence_facts)

    def _client(self, tensors: list[dict], kind: str) -> list[dict]:
        if self.sequence is None:
            return tensors
        fed = {self.sequence["start"]} | {s[f"{kind}_name"] for s in self.sequence["states"]}
        return [t for t in tensors if t["name"] not in fed]

    @property
    def client_inputs(self) -> list[dict]:
        """The inputs a client sends: a step graph's START and state inputs are the server's to feed."""
        return self._client(self.inputs, "input")

    @property
    def client_outputs(self) -> list[dict]:
        """The outputs a client gets: a step graph's state outputs stay with the server."""
        return self._client(self.outputs, "output")


def _dataset(data) -> dict:
    return {"name": data.name, "source": data.source, "description": data.description}


def _data_record(prepared: Prepared, in_shape: list[int]) -> dict:
    """What the plan records about the data: its name, features, the steps before the graph, what an input holds."""
    data, form = prepared.data, prepared.form
    record = {"dataset": _dataset(data), "before_graph": list(data.loading)}
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


def plan_export(resolved: Resolved, summary: Summary, model: torch.nn.Module, prepared: Prepared) -> ExportPlan:
    """The export of one run: its tensors, as its task and its architecture's export facts say, and the inputs to
    check parity with."""
    task, onnx_config = get_task(prepared.task), get_arch(resolved.config.arch).export
    hyper, X_test = resolved.network, prepared.X["test"]
    inputs = onnx_config.inputs(hyper, list(X_test.shape[1:]))
    in_shape = inputs[0]["shape"]
    example, parity = onnx_config.sample_inputs(hyper, X_test)
    shapes = task.output_shapes(prepared, hyper, in_shape)
    described = onnx_config.describe_inputs(hyper)
    record = _data_record(prepared, in_shape) if described is None else \
        {"dataset": _dataset(prepared.data), "input_shapes": described}
    return ExportPlan(task.serve(model).eval(), inputs,
                      [{"name": n, "datatype": "FP32", "shape": s} for n, s in zip(task.outputs, shapes)],
                      example, parity, onnx_config.dynamo, onnx_config.atol, clear_rnn_cache=onnx_config.clear_rnn_cache,
                      task_params={**onnx_config.task_params(hyper), **task.task_params(prepared, summary, resolved.config)},
                      **record)


def export_graph(plan: ExportPlan):
    """torch -> ONNX ModelProto with the plan's dynamic dims, opset 20, weights inside the file."""
    import onnx

    example = tuple(torch.from_numpy(x) for x in plan.example)
    input_names = [t["name"] for t in plan.inputs]
    output_names = [t["name"] for t in plan.outputs]
    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    dynamic = [{i: ("batch" if i == 0 else "sequence") for i, d in enumerate(t["shape"]) if d == -1}
               for t in plan.inputs]
    if plan.clear_rnn_cache:  # a stale dispatch cache freezes the sequence length
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

        buffer = io.BytesIO()  # the Elman RNN keeps a dynamic sequence only this way
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


def predictor_metrics(predict: Callable, config, prepared: Prepared, judge_dir: Path) -> dict:
    """The run's test metrics through any predictor (an ONNX Runtime session here), as torch was scored."""
    task = get_task(prepared.task)
    judge = train_judge(config, judge_dir, log=lambda _m: None) if task.needs_judge else None  # reused when there
    return task.test_metrics(predict, prepared, config, judge)


@dataclass
class Exported:
    """An exported, verified graph and what the metadata says about it."""

    model: object  # onnx.ModelProto (onnx is imported lazily)
    plan: ExportPlan
    parity: dict
    onnx_metrics: dict


def export_run(run_dir: Path) -> tuple[Exported, Resolved, Summary]:
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
        metric = summary.headline_metric
        ours, theirs = onnx_metrics[metric], summary.headline
        if not metric_matches(metric, ours, theirs):
            problems.append(f"test {metric}: ONNX {ours:.4f}, torch {theirs:.4f} (tolerance: 0.1 points)")
    if problems:
        raise ExportError(problems)
    return Exported(graph, plan, parity, onnx_metrics), resolved, summary


def quantize(exported: Exported, resolved: Resolved, run_dir: Path) -> tuple[Exported | None, list[str], dict]:
    """Dynamic int8 quantization, gated on accuracy and on speed measured side by side (training.quantize).

    Returns (the quantized export to publish instead of the float one, or None; the reasons it was refused;
    the quantization report). Parity with torch is the float graph's; the quantized graph is held to the
    accuracy gate instead, since int8 weights cannot meet atol 1e-5.
    """
    import onnx
    import onnxruntime as ort

    from training.quantize import decide

    prepared = prepare(config_of(resolved))
    metric = get_task(prepared.task).metric
    plan = exported.plan

    def evaluate(model_bytes: bytes) -> float:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return predictor_metrics(ort_predictor(session, plan), config_of(resolved), prepared, run_dir)[metric]

    def make_feed(batch: int) -> dict[str, np.ndarray]:
        return {plan.inputs[0]["name"]: resize(prepared.X["test"], batch)}

    decision, data = decide(exported.model, evaluate, make_feed, higher_is_better(metric))
    if not decision.publish:
        return None, decision.reasons, decision.report
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    metrics = predictor_metrics(ort_predictor(session, plan), config_of(resolved), prepared, run_dir)
    parity = {**exported.parity, "quantization": decision.report}
    return Exported(onnx.load_from_string(data), plan, parity, metrics), [], decision.report
