"""What a stream model's repository files say about its sequences: the `sequence_batching` block of config.pbtxt and
the model card's usage section, with a curl request and a tritonclient loop."""

from __future__ import annotations

import json

# Triton's direct strategy gives each live sequence one batch slot of a model instance, so this is the number of
# sequences one instance serves at once; a request of a sequence is always batch 1.
STREAM_MAX_BATCH_SIZE = 8

TRITONCLIENT_LOOP = '''```python
import numpy as np
import tritonclient.http as httpclient
{load}

client = httpclient.InferenceServerClient("127.0.0.1:8080")
for step, value in enumerate(series):
    new = httpclient.InferInput("input", [1, 1], "FP32")
    new.set_data_from_numpy(np.array([[value]], np.float32))  # this step's value only
    result = client.infer("{name}", [new], sequence_id=42, sequence_start=step == 0,
                          sequence_end=step == len(series) - 1)
    print(step, value, result.as_numpy("forecast")[0])  # the next {horizon} values
```'''
STATSMODELS_LOAD = ('from statsmodels.datasets import {dataset}\n\n'
                    'series = {dataset}.load_pandas().data.iloc[:, -1].interpolate().to_numpy("float32")  # oldest first')
OTHER_LOAD = 'series = np.loadtxt("series.csv", dtype=np.float32)  # your series, oldest first'


def graph_names(sequence: dict, inputs: list[str], outputs: list[str]) -> tuple[list[str], list[str]]:
    """The step graph's input and output names, in order: the client's, then START and the states."""
    states = sequence["states"]
    return (inputs + [sequence["start"]] + [s["input_name"] for s in states],
            outputs + [s["output_name"] for s in states])


def _state_pbtxt(state: dict) -> str:
    return (f'    {{\n      input_name: "{state["input_name"]}"\n      output_name: "{state["output_name"]}"\n'
            f'      data_type: {state["data_type"]}\n      dims: [ {", ".join(str(d) for d in state["dims"])} ]\n    }}')


def sequence_batching_pbtxt(sequence: dict) -> str:
    """config.pbtxt's `sequence_batching` block of a step graph (its metadata's `sequence` section)."""
    false, true = sequence["start_values"]
    states = ",\n".join(_state_pbtxt(s) for s in sequence["states"])
    return ("sequence_batching {\n"
            f"  max_sequence_idle_microseconds: {sequence['idle_microseconds']}\n"
            "  control_input [\n    {\n"
            f'      name: "{sequence["start"]}"\n'
            "      control [\n        {\n          kind: CONTROL_SEQUENCE_START\n"
            f"          fp32_false_true: [ {false}, {true} ]\n        }}\n      ]\n    }}\n  ]\n"
            f"  state [\n{states}\n  ]\n}}\n")


def _request(name: str, version: int, parameters: dict, value: float) -> str:
    body = {"parameters": parameters, "inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32",
                                                  "data": [round(value, 4)]}]}
    return f"curl -s http://127.0.0.1:8080/v2/models/{name}/versions/{version}/infer -d '{json.dumps(body)}'"


def _parity_lines(stream: dict) -> list[str]:
    checks = stream["checks"]
    lengths = sorted({c["length"] for c in checks})
    lines = [f"Streamed against the window graph: {checks[0]['windows']} test windows of {lengths} steps, one and "
             f"{max(c['steps_per_call'] for c in checks)} steps per call, compared after every call: max |step - "
             f"window| / max(1, |window|) = {stream['max_scaled_diff']:.2e} (atol {stream['atol']:g})."]
    whole = stream.get("whole_series")
    if whole:
        lines += ["", f"The whole series streamed as one sequence from its first value ({whole['steps']} steps): "
                      f"test MAE {whole['test_mae']:.4f} at the test windows' ends, against {whole['window_mae']:.4f} "
                      f"for the windows of {whole['window']} alone."]
    return lines


def stream_card_lines(meta: dict, example: list[float]) -> list[str]:
    """The card's opening and usage section for a step graph; `example` holds two real consecutive values."""
    name, version, params = meta["name"], meta["version"], meta["task_params"]
    idle = meta["sequence"]["idle_microseconds"] / 1e6
    horizon, training = params["horizon"], meta["training"]
    load = STATSMODELS_LOAD.format(dataset=training["dataset"]) if training["dataset_source"] == "bundled" \
        else OTHER_LOAD
    return [f"# {name} version {version}", "",
            f"The step graph of a `{meta['architecture']}` forecaster, trained on "
            f"{training['dataset_description']}: it reads a series one value at a time, and the server "
            "keeps the recurrent state between requests (Triton's sequence batcher; see config.pbtxt).", "",
            "## How to use it", "",
            "- Stream each series as one sequence. Every request carries the parameter `sequence_id` (an integer or "
            "a string you choose, the same on every request of the sequence); the first also carries "
            "`sequence_start: true`, the last `sequence_end: true`, which frees the state.",
            "- Input `input`, FP32 [1, S]: the new value(s) of the series in its own units, oldest first; S = 1 "
            "for one new weekly value per request. Never resend old values: the state holds them.",
            f"- Answer `forecast`, FP32 [1, {horizon}]: the next {horizon} values after the last one sent, in the "
            "series' units. It equals the window model's forecast on every value of the sequence so far.",
            f"- A sequence idle for more than {idle:g} s (`max_sequence_idle_microseconds`) is dropped; a later "
            "request without `sequence_start` is refused, so start it again.",
            f"- Preprocessing inside the graph: {'; '.join(meta['preprocessing']['steps'])}.", "",
            "First and next request (Open Inference Protocol, JSON):", "", "```sh",
            _request(name, version, {"sequence_id": 42, "sequence_start": True}, example[0]),
            _request(name, version, {"sequence_id": 42}, example[1]), "```", "",
            "A tritonclient loop that streams the series one value at a time:", "",
            TRITONCLIENT_LOOP.format(name=name, horizon=horizon, load=load), "",
            *_parity_lines(meta["export"]["parity"]["stream"]), ""]
