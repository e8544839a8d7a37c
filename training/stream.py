"""The stateful step graph of a recurrent forecaster, for Triton's sequence batcher (config.pbtxt `sequence_batching`).

A client sends the next value(s) of its series; the server feeds the graph the sequence's START flag and the state
the graph returned on the sequence's previous request (zeros on its first), and keeps the new state. The state is
the cell's (h, and c for an LSTM, batch first: [B, L, H]) and the previous raw value `prev` [B, 1], which the
causal scaling needs for the first new step's difference. The step graph's answer after any prefix of a series
equals the window graph's on that prefix (`stream_parity`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from training.architectures.recurrent import BIDIRECTIONAL
from training.network import Network

START = "START"  # the CONTROL_SEQUENCE_START input: 1.0 on a sequence's first request, else 0.0
IDLE_MICROSECONDS = 3_600_000_000  # a sequence idle for an hour is dropped
STREAM_SUFFIX = "-stream"  # the step graph of model NAME is published as NAME-stream
STREAM_CHUNK = 3  # steps per call in the parity check's second pass


def check_streamable(network: nn.Module, forecasts: bool) -> None:
    """Raise ValueError (one line: the field and what was expected) unless `network` can run one step at a time."""
    body = getattr(network, "body", None)
    if not forecasts or not getattr(network, "series", False):
        raise ValueError("task: a step graph forecasts a series one step at a time; expected a forecasting run")
    if not hasattr(body, "step"):
        raise ValueError(f"arch: {type(body).__name__} keeps no recurrent state; expected rnn, lstm or gru")
    if body.bidirectional:
        raise ValueError(BIDIRECTIONAL)
    if network.scaling != "diff":
        raise ValueError(f"data.scaling: {network.scaling!r} scales every step by a later value, which a step graph "
                         "does not have; expected 'diff'")


class StreamModel(nn.Module):
    """(new raw steps [B, S], START [B, 1], h_in [B, L, H], prev_in [B, 1]) -> (forecast [B, H'], h_out, prev_out)."""

    def __init__(self, network: Network):
        super().__init__()
        self.network = network

    def advance(self, x: torch.Tensor, start: torch.Tensor, prev_in: torch.Tensor, states: tuple):
        keep = 1.0 - start  # [B, 1]: 0 on a sequence's first request, where the state is ignored
        prev = prev_in * keep + x[:, :1] * start  # [B, 1]: x[0] itself at the start, as the window graph has it
        previous = torch.cat([prev, x[:, :-1]], dim=1)  # [B, S]
        scaled = ((x - previous) / self.network.x_std).unsqueeze(-1)  # [B, S, 1], as Network.scale "diff"
        cell = tuple((s * keep.unsqueeze(-1)).transpose(0, 1).contiguous() for s in states)  # [B, L, H] -> [L, B, H]
        out, new = self.network.body.step(scaled, cell if len(cell) > 1 else cell[0])
        new = new if isinstance(new, tuple) else (new,)
        forecast = self.network.unscale_outputs(out, x)  # [B, H'], added to the last raw value
        last = x[:, -1].unsqueeze(1)  # [B, 1], with a static 1 (a slice -1: leaves it symbolic in TorchScript)
        return (forecast, *(s.transpose(0, 1) for s in new), last)

    def forward(self, x, start, h_in, prev_in):
        return self.advance(x, start, prev_in, (h_in,))


class LSTMStreamModel(StreamModel):
    """The LSTM's: its cell state c travels beside h."""

    def forward(self, x, start, h_in, c_in, prev_in):
        return self.advance(x, start, prev_in, (h_in, c_in))


def stream_module(network: Network) -> StreamModel:
    return (LSTMStreamModel if network.body.cell == "lstm" else StreamModel)(network).eval()


def sequence_facts(hyper: dict) -> dict:
    """The metadata's `sequence` section: the START control and the states the server keeps (config.pbtxt dims,
    without the batch dim)."""
    cell_dims = [hyper["num_layers"], hyper["hidden_dim"]]
    states = [{"input_name": f"{n}_in", "output_name": f"{n}_out", "data_type": "TYPE_FP32", "dims": cell_dims}
              for n in (("h", "c") if hyper["cell"] == "lstm" else ("h",))]
    states.append({"input_name": "prev_in", "output_name": "prev_out", "data_type": "TYPE_FP32", "dims": [1]})
    return {"start": START, "start_values": [0, 1], "idle_microseconds": IDLE_MICROSECONDS, "states": states}


def graph_specs(sequence: dict, client_inputs: list[dict], client_outputs: list[dict]) -> tuple[list, list]:
    """The step graph's tensor specs (shape -1: dynamic): the client's, then START and the states."""
    states = sequence["states"]
    inputs = client_inputs + [{"name": sequence["start"], "datatype": "FP32", "shape": [-1, 1]}]
    inputs += [{"name": s["input_name"], "datatype": "FP32", "shape": [-1, *s["dims"]]} for s in states]
    outputs = client_outputs + [{"name": s["output_name"], "datatype": "FP32", "shape": [-1, *s["dims"]]}
                                for s in states]
    return inputs, outputs


def run_steps(session, sequence: dict, chunks: list[np.ndarray], client_input: str = "input",
              output: str = "forecast") -> list[np.ndarray]:
    """Stream `chunks` (each [B, S_i], in order) through a step graph from START, carrying the state between calls
    as the server does (zeros on the first request); return the forecast after each chunk."""
    states = sequence["states"]
    batch = len(chunks[0])
    carried = {s["input_name"]: np.zeros((batch, *s["dims"]), np.float32) for s in states}
    wanted = [output] + [s["output_name"] for s in states]
    forecasts = []
    for i, chunk in enumerate(chunks):
        start = np.full((batch, 1), sequence["start_values"][1 if i == 0 else 0], np.float32)
        got = session.run(wanted, {client_input: np.ascontiguousarray(chunk, np.float32), sequence["start"]: start,
                                   **carried})
        forecasts.append(got[0])
        carried = {s["input_name"]: value for s, value in zip(states, got[1:])}
    return forecasts


def stream_predictor(session, sequence: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Windows [N, T] -> forecasts [N, H']: each window streamed from START one step per call."""

    def predict(X: np.ndarray) -> np.ndarray:
        return run_steps(session, sequence, [X[:, t:t + 1] for t in range(X.shape[1])])[-1]

    return predict


def parity_windows(series: np.ndarray, ends: np.ndarray, lengths: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Real windows of the series ending at `ends` (exclusive), one batch [len(ends), T] per length T."""
    return {t: np.stack([series[e - t:e] for e in ends]).astype(np.float32) for t in lengths if ends.min() >= t}


def _scaled_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float((np.abs(ours.astype(np.float64) - theirs) / np.maximum(1.0, np.abs(theirs))).max())


def stream_parity(step_session, window_session, sequence: dict, windows: dict[int, np.ndarray],
                  atol: float) -> tuple[dict, list[str]]:
    """Each window streamed through the step graph (one step per call, then STREAM_CHUNK steps per call) against
    the window graph on the same prefix, after every call; return (report, problems)."""
    report = {"atol": atol, "rule": "|step - window| <= atol * max(1, |window|), after every call, on the same prefix",
              "checks": [], "max_scaled_diff": 0.0}
    problems = []
    for length, X in windows.items():
        for per_call in (1, STREAM_CHUNK):
            bounds = list(range(per_call, length, per_call)) + [length]
            chunks = [X[:, a:b] for a, b in zip([0] + bounds[:-1], bounds)]
            streamed = run_steps(step_session, sequence, chunks)
            worst = max(_scaled_diff(got, window_session.run(["forecast"], {"input": X[:, :b]})[0])
                        for got, b in zip(streamed, bounds))
            report["checks"].append({"windows": len(X), "length": length, "steps_per_call": per_call,
                                     "calls": len(bounds), "max_scaled_diff": worst})
            report["max_scaled_diff"] = max(report["max_scaled_diff"], worst)
            if not worst <= atol:
                problems.append(f"stream: {len(X)} windows of {length} steps, {per_call} per call: max |step - "
                                f"window| / max(1, |window|) = {worst:.3g} exceeds atol {atol:g}")
    return report, problems


def whole_series_check(session, sequence: dict, series: np.ndarray, ends: np.ndarray, y: np.ndarray) -> dict:
    """The whole series streamed as one sequence from its first value: the MAE of the forecasts made after the
    steps at `ends` (exclusive) against `y`. It shows how the model fares on sequences far longer than its
    training windows, as a client that streams from the start sees it."""
    steps = int(ends.max())
    forecasts = run_steps(session, sequence, [series[None, t:t + 1] for t in range(steps)])
    predicted = np.stack([forecasts[e - 1][0] for e in ends])  # [N, H']
    return {"steps": steps, "test_mae": float(np.abs(predicted - y).mean())}
