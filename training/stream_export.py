"""Export the step graph of a recurrent forecasting run (training.stream) and verify it twice: against its torch
module, as every export is, and against the run's window graph, each test window streamed one step and a few
steps per call. Nothing is returned, so nothing can be published, when either check fails (export.ExportError).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.architectures import get_arch
from training.architectures.onnx_config import EXAMPLE_BATCH, resize
from training.export import ExportError, Exported, ExportPlan, export_graph, export_run
from training.prepare import Prepared, prepare
from training.runs import Resolved, Summary, config_of, load_trained
from training.stream import (check_streamable, graph_specs, parity_windows, sequence_facts, stream_module,
                             stream_parity, stream_predictor, whole_series_check)
from training.tasks import get_task
from training.verify import metric_matches, verify

PARITY_WINDOWS = 5  # test windows streamed side by side in the parity check
TORCH_PARITY = ((1, 1), (3, 1), (5, 4), (33, 2))  # (batch, steps per call) of the torch check


def _feed(X: np.ndarray, sequence: dict, batch: int, steps: int, seed: int) -> tuple[np.ndarray, ...]:
    """One call's inputs in the graph's order: real steps, START on every other row, random states (and prev)."""
    rng = np.random.default_rng(seed)
    x = resize(X, batch)[:, :steps]
    start = (np.arange(batch) % 2 == 0).astype(np.float32).reshape(batch, 1)
    states = [rng.standard_normal((batch, *s["dims"])).astype(np.float32) * 0.5 for s in sequence["states"][:-1]]
    prev = x[:, :1] + rng.standard_normal((batch, 1)).astype(np.float32)
    return (x, start, *states, prev)


def _client_record(prepared: Prepared, window_plan: ExportPlan) -> dict:
    """What a client of the step graph does before it, and what its input holds."""
    per_request = (f"the next value(s) of the series in its own units, oldest first: [1] for one new value, [S] for "
                   f"S of them (trained on windows of {prepared.window}; forecasts the next {prepared.horizon} after "
                   "the last value sent)")
    loading = list(prepared.data.loading)
    steps = loading + ["send the series in time order, one new value (or a few) per request of one sequence: "
                       "sequence_start on the first request, the same sequence_id on every request; the server "
                       "keeps the state in between"]
    return {"dataset": window_plan.dataset, "before_graph": steps, "input_shapes": {"input": per_request}}


def plan_stream(resolved: Resolved, network, prepared: Prepared, window_plan: ExportPlan) -> ExportPlan:
    """The export of a run's step graph: its tensors (the window graph's, then START and the states), the example
    and the inputs torch parity is checked at."""
    onnx_config = get_arch(resolved.config.arch).export
    sequence = sequence_facts(resolved.network)
    inputs, outputs = graph_specs(sequence, window_plan.inputs, window_plan.outputs)
    X = prepared.X["test"]
    example = _feed(X, sequence, EXAMPLE_BATCH, 3, seed=0)  # every dynamic dim >= 2 in the example
    parity = [_feed(X, sequence, batch, steps, seed=i) for i, (batch, steps) in enumerate(TORCH_PARITY, start=1)]
    params = {**window_plan.task_params, "steps_per_request": "one new value, or a few, of one sequence",
              "max_sequence_idle_seconds": sequence["idle_microseconds"] / 1e6}
    return ExportPlan(stream_module(network), inputs, outputs, example, parity, onnx_config.dynamo, onnx_config.atol,
                      clear_rnn_cache=onnx_config.clear_rnn_cache, task_params=params, sequence=sequence,
                      **_client_record(prepared, window_plan))


def _windows(prepared: Prepared) -> dict[int, np.ndarray]:
    """Test windows of the raw series at several lengths, the training window among them, all ending where
    PARITY_WINDOWS evenly spaced test windows end."""
    test, window = prepared.split.test, prepared.window
    ends = test[np.linspace(0, len(test) - 1, PARITY_WINDOWS).astype(int)] + window
    return parity_windows(prepared.data.X, ends, (1, max(2, window // 2), window, 2 * window))


def export_stream(run_dir: Path, window: Exported | None = None) -> tuple[Exported, Resolved, Summary]:
    """Export and verify the step graph of a recurrent forecasting run; `window` is the run's exported window graph
    (exported here when not given). ValueError when the run cannot stream; ExportError when a check fails."""
    import onnxruntime as ort

    run_dir = Path(run_dir)
    resolved, summary, network = load_trained(run_dir)
    prepared = prepare(config_of(resolved))
    task = get_task(prepared.task)
    check_streamable(network, task.forecasts)
    if window is None:
        window, _, _ = export_run(run_dir)
    plan = plan_stream(resolved, network, prepared, window.plan)
    graph = export_graph(plan)
    parity, session, problems = verify(graph, plan)
    metrics: dict = {}
    if session is not None:
        window_session = ort.InferenceSession(window.model.SerializeToString(), providers=["CPUExecutionProvider"])
        parity["stream"], more = stream_parity(session, window_session, plan.sequence, _windows(prepared), plan.atol)
        problems += more
        metrics = task.test_metrics(stream_predictor(session, plan.sequence), prepared, config_of(resolved))
        whole = whole_series_check(session, plan.sequence, prepared.data.X, prepared.split.test + prepared.window,
                                   prepared.y["test"])
        parity["stream"]["whole_series"] = {**whole, "window": prepared.window, "window_mae": metrics.get("mae")}
        metric = summary.headline_metric
        if not metric_matches(metric, metrics[metric], summary.headline):
            problems.append(f"test {metric}: streamed {metrics[metric]:.4f}, torch {summary.headline:.4f} "
                            "(tolerance: 0.1 points)")
    if problems:
        raise ExportError(problems)
    return Exported(graph, plan, parity, metrics), resolved, summary
