"""Step graphs of recurrent forecasters: causal scaling, parity with the window graph, refusals, config.pbtxt."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service import artifact
from service.pbtxt import parse_pbtxt
from tests.conftest import ROOT
from training import architectures
from training.config import apply_overrides, load_config
from training.export import ExportError, export_run
from training.network import Network
from training.publish import publish
from training.stream import STREAM_SUFFIX, check_streamable, run_steps
from training.stream_export import export_stream
from training.trainer import fit

CELLS = ("rnn", "lstm", "gru")
TINY = ["train.epochs=2", "data.window=8", "data.horizon=2", "model.hidden_dim=8", "model.num_layers=2"]


def _tiny(arch: str, *extra: str):
    return apply_overrides(load_config("sunspots-gru"), [f"arch={arch!r}", f"name='tiny-{arch}'", *TINY, *extra])


@pytest.fixture(scope="module", params=CELLS)
def streamed(request, tmp_path_factory):
    """A tiny two-layer forecaster of each cell, its window graph and its step graph, both published."""
    run = tmp_path_factory.mktemp("stream") / request.param
    fit(_tiny(request.param), run, log=lambda _m: None)
    repo = run.parent / "models"
    window, resolved, summary = export_run(run)
    publish(window, resolved, summary, f"tiny-{request.param}", repo, log=lambda _m: None)
    exported, resolved, summary = export_stream(run, window)
    name = f"tiny-{request.param}{STREAM_SUFFIX}"
    publish(exported, resolved, summary, name, repo, log=lambda _m: None)
    return request.param, run, repo, name, exported


def test_diff_scaling_is_causal():
    """No scaled step depends on a later value; "last" scaling makes every step depend on the last one."""
    body = architectures.build("gru", architectures.resolve_hyper("gru", {"hidden_dim": 4}, [6, 1], 2))
    x = torch.arange(12, dtype=torch.float32).reshape(2, 6) ** 1.5
    changed = x.clone()
    changed[:, -1] += 10
    diff = Network(body, 0.0, 2.0, series=True, scaling="diff")
    last = Network(body, 0.0, 2.0, series=True, scaling="last")
    assert torch.equal(diff.scale(x)[:, :-1], diff.scale(changed)[:, :-1])
    assert not torch.equal(last.scale(x)[:, :-1], last.scale(changed)[:, :-1])
    np.testing.assert_allclose(diff.scale(x)[:, 1:, 0], torch.diff(x, dim=1) / 2.0)
    assert torch.all(diff.scale(x)[:, 0] == 0)


def test_unknown_scaling_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data.scaling: expected one of \['last', 'diff'\], got 'log'"):
        fit(_tiny("gru", "data.scaling='log'"), tmp_path / "run", log=lambda _m: None)


def test_step_graph_equals_the_window_graph_for_every_cell(streamed):
    """Streamed one step and three steps per call, the answer after every call equals the window graph's."""
    cell, _, _, _, exported = streamed
    stream = exported.parity["stream"]
    assert stream["max_scaled_diff"] <= stream["atol"] == 1e-5
    assert {c["length"] for c in stream["checks"]} >= {1, 4, 8, 16}  # the training window (8) among them
    assert {c["steps_per_call"] for c in stream["checks"]} == {1, 3}
    assert exported.parity["max_abs_diff"] <= 1e-4 and len(exported.parity["checks"]) == 4
    assert np.isfinite(stream["whole_series"]["test_mae"])


@pytest.mark.parametrize("overrides, fragment", [
    ({"bidirectional": True}, "model.bidirectional: a bidirectional network reads future steps"),
    ({"scaling": "last"}, "data.scaling: 'last' scales every step by a later value"),
    ({"arch": "transformer"}, "arch: TransformerNet keeps no recurrent state; expected rnn, lstm or gru"),
])
def test_what_cannot_stream_is_refused(overrides, fragment):
    arch = overrides.get("arch", "lstm")
    model = {"bidirectional": True} if "bidirectional" in overrides else {}
    body = architectures.build(arch, architectures.resolve_hyper(arch, model, [8, 1], 2))
    network = Network(body, 0.0, 1.0, series=True, scaling=overrides.get("scaling", "diff"))
    with pytest.raises(ValueError) as info:
        check_streamable(network, forecasts=True)
    assert str(info.value).startswith(fragment)


def test_a_bidirectional_run_is_refused_before_any_export(tmp_path):
    run = tmp_path / "bi"
    fit(_tiny("lstm", "model.bidirectional=true"), run, log=lambda _m: None)
    with pytest.raises(ValueError, match="model.bidirectional"):
        export_stream(run)


def test_a_step_graph_that_differs_from_the_window_graph_is_not_exported(streamed, monkeypatch):
    import training.stream_export as stream_export

    _, run, _, _, _ = streamed
    original = stream_export.stream_module

    def skewed(network):
        network = copy.deepcopy(network)
        network.x_std.mul_(1.01)  # the step graph scales its steps differently from the window graph
        return original(network)

    monkeypatch.setattr(stream_export, "stream_module", skewed)
    with pytest.raises(ExportError) as info:
        export_stream(run)
    assert any(p.startswith("stream: 5 windows of 8 steps, 1 per call") for p in info.value.problems)


def _sequence_of(config: dict) -> dict:
    """The START control and states as config.pbtxt declares them (what a server reads), in run_steps' form."""
    block = config["sequence_batching"][0]
    control = block["control_input"][0]
    flags = control["control"][0]
    assert flags["kind"] == ["CONTROL_SEQUENCE_START"]
    states = [{"input_name": s["input_name"][0], "output_name": s["output_name"][0], "dims": s["dims"],
               "data_type": s["data_type"][0]} for s in block["state"]]
    return {"start": control["name"][0], "start_values": flags["fp32_false_true"], "states": states,
            "idle": block["max_sequence_idle_microseconds"][0]}


def test_config_and_graph_agree_and_a_server_gets_the_window_answers(streamed):
    """In process, as a sequence batcher would: the graph's extra tensors are exactly config.pbtxt's START and
    states, of the declared dims; fed zeros at START and its own state after, it answers as the window model."""
    cell, _, repo, name, _ = streamed
    meta = artifact.read_metadata(repo / name / "1")
    assert [t["name"] for t in meta["inputs"]] == ["input"] and [t["name"] for t in meta["outputs"]] == ["forecast"]
    config = parse_pbtxt((repo / name / "config.pbtxt").read_text())
    assert config["name"] == [name] and config["max_batch_size"] == [8] and "dynamic_batching" not in config
    assert [t["name"][0] for t in config["input"]] == ["input"] and config["input"][0]["dims"] == [-1]
    assert config["output"][0]["dims"] == [2]
    sequence = _sequence_of(config)
    assert sequence["idle"] == 3_600_000_000 and sequence["start_values"] == [0, 1]
    cells = ["h", "c"] if cell == "lstm" else ["h"]
    assert [s["input_name"] for s in sequence["states"]] == [f"{n}_in" for n in cells] + ["prev_in"]
    assert [s["dims"] for s in sequence["states"]] == [[2, 8]] * len(cells) + [[1]]
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    graph_in = {n.name: n.shape for n in session.get_inputs()}
    graph_out = {n.name: n.shape for n in session.get_outputs()}
    assert set(graph_in) == {"input", "START"} | {s["input_name"] for s in sequence["states"]}
    assert set(graph_out) == {"forecast"} | {s["output_name"] for s in sequence["states"]}
    for s in sequence["states"]:
        assert graph_in[s["input_name"]][1:] == s["dims"] == graph_out[s["output_name"]][1:]
    window = ort.InferenceSession(str(repo / f"tiny-{cell}" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    series = np.linspace(0, 3, 12, dtype=np.float32)[None] ** 2 * 40
    streamed_out = run_steps(session, sequence, [series[:, t:t + 1] for t in range(12)])
    for t in (1, 8, 12):
        np.testing.assert_allclose(streamed_out[t - 1], window.run(None, {"input": series[:, :t]})[0], rtol=1e-5)


def test_the_card_says_how_to_stream(streamed):
    _, _, repo, name, _ = streamed
    card = (repo / name / "1" / "model_card.md").read_text()
    for needle in ("sequence_id", "sequence_start: true", "sequence_end: true", "3600 s", "tritonclient.http",
                   f'client.infer("{name}"', "Streamed against the window graph"):
        assert needle in card


def test_check_accepts_the_stream_model(streamed):
    from training.repository import check_version

    _, _, repo, name, _ = streamed
    assert check_version(repo / name / "1") == []


def test_cli_export_stream(streamed, tmp_path):
    _, run, _, _, _ = streamed
    command = [sys.executable, "-m", "training", "export", str(run), "--models", str(tmp_path), "--name", "s"]
    done = subprocess.run(command + ["--stream"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "stream: max |step - window|" in done.stdout and (tmp_path / "s" / "1" / "model.onnx").exists()
    refused = subprocess.run(command + ["--stream", "--quantize", "dynamic"], capture_output=True, text=True,
                             cwd=ROOT, timeout=300)
    assert refused.returncode == 2 and "--quantize: a step graph (--stream)" in refused.stderr
