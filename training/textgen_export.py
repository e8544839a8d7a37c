"""Export a char-lstm run as a generator (training/textgen_graph.py): verified against torch, then published.

Parity: the graph and `textgen_graph.generate` (the same procedure on the torch model) must write the same text for
prompts in ASCII, accents, CJK and emoji, empty and long prompts, greedy and sampled, alone and in batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from service import artifact
from training.export import ExportError
from training.textgen import load_writer_run
from training.textgen_graph import MAX_NEW_TOKENS, generate, generator_graph

MAX_PROMPT_BYTES = 4096  # a longer prompt is refused by the service (the graph itself reads any length)
MAX_TEMPERATURE = 10.0
PARITY_PROMPTS = ["The ", "", "Ça va très bien, merci", "日本語のテキスト 😀🎉", "A man, a plan, a canal",
                  "x" * 3000, "  spaces   and\ttabs", "Q"]
SAMPLE_PROMPTS = ["", "The meaning of life is", "A computer", "Love is"]


def parity_requests() -> list[dict]:
    """Batches of (prompt, max_new_tokens, temperature, seed) rows that the export compares with torch."""
    rows = [(p, 60, t, s) for s in (0, 1) for p in PARITY_PROMPTS for t in (0.0, 0.8, 1.0)]
    return [{"rows": rows[:1]}, {"rows": rows[:5]}, {"rows": rows[:33]},
            {"rows": [("The ", 0, 1.0, 3), ("The ", 1, 1.0, 3), ("The ", 300, 0.5, 2**62)]}]


def feed(rows: list[tuple]) -> dict[str, np.ndarray]:
    return {"prompt": np.array([r[0] for r in rows], dtype=object),
            "max_new_tokens": np.array([r[1] for r in rows], dtype=np.int64),
            "temperature": np.array([r[2] for r in rows], dtype=np.float32),
            "seed": np.array([r[3] for r in rows], dtype=np.int64)}


def parity(graph, model, chars: list[str]) -> tuple[dict, list[str]]:
    """(the parity record, the problems): the graph's texts against torch's, request by request."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    problems, checks = [], []
    for request in parity_requests():
        rows = request["rows"]
        got = list(session.run(None, feed(rows))[0])
        want = generate(model, chars, *map(list, zip(*rows)))
        same = sum(g == w for g, w in zip(got, want))
        checks.append({"batch": len(rows), "equal_texts": same})
        for (prompt, *_), g, w in zip(rows, got, want):
            if g != w:
                problems.append(f"prompt {prompt[:20]!r}: ONNX wrote {g[:30]!r}, torch {w[:30]!r}")
    return {"rule": "the same text from ONNX Runtime and torch, row by row", "checks": checks}, problems


def export_writer_run(run_dir: Path) -> tuple[object, dict, dict, object]:
    """(graph, parity, config.json, the torch model) of a finished char-lstm run; ExportError on a failure."""
    import onnx

    resolved, _summary, model = load_writer_run(run_dir)
    graph = generator_graph(model, resolved["chars"])
    onnx.checker.check_model(graph)
    record, problems = parity(graph, model, resolved["chars"])
    if problems:
        raise ExportError(problems)
    return graph, record, resolved, model


def samples(graph) -> list[dict]:
    """What the graph writes for SAMPLE_PROMPTS (seeds 1, 2, ..., temperature 0.8, 200 characters), for the model
    card."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = [(p, 200, 0.8, seed) for seed, p in enumerate(SAMPLE_PROMPTS, start=1)]
    return [{"prompt": r[0], "seed": r[3], "temperature": 0.8, "text": t}
            for r, t in zip(rows, session.run(None, feed(rows))[0])]


def input_specs() -> list[dict]:
    """The inputs with the limits the service enforces (nnserve's metadata layer; see docs/text.md)."""
    return [{"name": "prompt", "datatype": "BYTES", "shape": [-1], "max_bytes": MAX_PROMPT_BYTES},
            {"name": "max_new_tokens", "datatype": "INT64", "shape": [-1], "minimum": 0,
             "maximum": MAX_NEW_TOKENS, "default": 200},
            {"name": "temperature", "datatype": "FP32", "shape": [-1], "minimum": 0.0, "maximum": MAX_TEMPERATURE,
             "default": 0.8},
            {"name": "seed", "datatype": "INT64", "shape": [-1], "minimum": 0, "default": 0}]


def build_writer_metadata(run_dir: Path, name: str, version: int, record: dict, resolved: dict,
                          written: list[dict]) -> dict:
    import onnx
    import onnxruntime
    import torch

    from training.runs import Summary

    summary = Summary.from_dict(json.loads((Path(run_dir) / "summary.json").read_text()))
    chars = resolved["chars"]
    return {
        "schema_version": artifact.SCHEMA_VERSION, "name": name, "version": version,
        "architecture": resolved["arch"], "task": "generation", "inputs": input_specs(),
        "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "task_params": {"max_new_tokens": MAX_NEW_TOKENS, "characters": len(chars), "tokenizer": "characters",
                        "sampling": "in the graph (ONNX Loop), Park-Miller stream from the seed"},
        "preprocessing": {
            "in_graph": True, "input": "one UTF-8 prompt per row, with its max_new_tokens, temperature and seed",
            "before_graph": ["nothing: send the raw UTF-8 prompt"],
            "steps": ["split into characters (com.microsoft Tokenizer)",
                      f"look each up among {len(chars)} characters (LabelEncoder; others: unknown)",
                      "read the prompt with the LSTM (sequence_lens: each row to its own end)",
                      f"write up to max_new_tokens characters (at most {MAX_NEW_TOKENS}) in an ONNX Loop, stopping "
                      "at the end-of-text symbol"],
            "input_shapes": {"prompt": f"a UTF-8 string of at most {MAX_PROMPT_BYTES} bytes (the service's limit)",
                             "max_new_tokens": f"0 to {MAX_NEW_TOKENS}",
                             "temperature": f"0 (greedy) to {MAX_TEMPERATURE:g}", "seed": "0 to 2^63 - 1"},
            "output": "the characters written after the prompt (the prompt is not repeated)"},
        "samples": written,
        "training": {
            "dataset": summary.dataset, "dataset_source": summary.dataset_source,
            "dataset_description": summary.dataset_description, "split": summary.split, "seed": summary.seed,
            "headline_metric": "bits_per_char", "metrics": summary.metrics, "baseline": summary.baseline,
            "hyperparameters": {**{k: resolved[k] for k in ("model", "optimizer", "train", "data")},
                                "network": resolved["network"], "precision": resolved["precision"]},
            "config_sha256": resolved["config_sha256"], "best_epoch": summary.best_epoch,
            "epochs_run": summary.epochs_run, "train_seconds": summary.train_seconds,
            "library_versions": summary.library_versions, "created_at": summary.created_at},
        "export": {"opset": 20, "exporter": "onnx.helper (the LSTM's weights in ONNX's gate order, the sampling "
                                            "loop as an ONNX Loop)",
                   "library_versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                                        "onnxruntime": onnxruntime.__version__},
                   "parity": record},
    }


def sample_lines(written: list[dict]) -> list[str]:
    lines = ["", "## Samples", "", "Temperature 0.8, up to 200 characters; the prompt in bold.", ""]
    return lines + [f"- seed {s['seed']}: **{s['prompt'] or '(empty prompt)'}**{s['text']}" for s in written]


def publish_writer_run(run_dir: Path, name: str, models_dir: Path,
                       log: Callable[[str], None] = print) -> tuple[int, Path]:
    """Export, verify and publish a char-lstm run as the next version of `name` (model card, config.pbtxt)."""
    from training.repository import model_card, publish_graph
    from training.textplots import learning_curve_plot

    graph, record, resolved, _model = export_writer_run(run_dir)
    written = samples(graph)
    plot = learning_curve_plot(Path(run_dir))
    example = [np.array(["The meaning of life is"], dtype=object), np.array([40]), np.array([0.8], dtype=np.float32),
               np.array([1])]
    version, path = publish_graph(
        models_dir, name, graph, lambda version: build_writer_metadata(run_dir, name, version, record, resolved, written),
        {f"plots/{plot.name}": plot.read_bytes()},
        lambda meta: "\n".join([model_card(meta, [f"plots/{plot.name}"], example).rstrip(), *sample_lines(written), ""]))
    log(f"   published {name} version {version} at {path} (ONNX and torch wrote the same texts)")
    return version, path
