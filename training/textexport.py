"""Export a text run: the torch model (character ids -> probabilities, dynamo; the n-gram hashing is part of it)
composed with the character front-end (training/texttokens.py) into one graph that takes a BYTES tensor [B] of
UTF-8 strings; verified, then published.

Parity is checked three times: the front-end's ids against `texttokens.encode` for ASCII, accents, Cyrillic, Greek,
CJK, emoji, empty, whitespace-only and very long strings; the whole graph's probabilities against torch on the
same strings at several batch sizes; and the test accuracy through ONNX Runtime against torch's.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from service import artifact
from training.architectures.text_transformer import ServedTextClassifier
from training.export import OPSET, ExportError, without_stack_traces
from training.textfit import classification_metrics, load_text, load_text_run, predict
from training.texttokens import MAX_CHARS, MS_DOMAIN, encode, pad, tokenizer_graph

MAX_TEXT_BYTES = 4096  # a longer string is refused by the service (the graph itself reads the first MAX_CHARS)
ATOL = 1e-5
PARITY_TEXTS = ["Hello world, how are you?", "Ça va très bien, merci beaucoup!", "Привет, как дела?",
                "日本語のテキスト 中文 한국어", "emoji 😀🎉 👍🏽 here", "", "   ", "ΟΔΟΣ İstanbul STRASSE",
                " ".join(["word"] * 500), "x" * 10_000, "tab\tand\nnewline  double  space", "a", "ab", "abc",
                "abcd", "Żółć gęślą jaźń", "Příliš žluťoučký kůň", "Ĉu vi parolas Esperanton?", "Добър ден",
                "e\u0301 combining", "\u00a0\u2028\ufeff odd spaces", "x" * (MAX_CHARS - 1) + "😀🎉"]


def torch_graph(model) -> object:
    """ServedTextClassifier exported with dynamo: ids int64 [batch, sequence] -> probabilities [batch, C]."""
    served = ServedTextClassifier(model).eval()
    example = torch.from_numpy(pad(encode(["a b c d e f", "g h i j k l m n"], [])))  # every dynamic dim >= 2
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence", max=MAX_CHARS + 1)}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(served, (example,), dynamo=True, external_data=False, opset_version=OPSET,
                                    input_names=["ids"], output_names=["probabilities"], dynamic_shapes=(dims,),
                                    verbose=False)
    return without_stack_traces(program.model_proto)


def compose(model, alphabet: list[str]):
    """The served graph: text STRING [B] -> probabilities FP32 [B, C]."""
    import onnx
    from onnx import compose as onnx_compose

    front = tokenizer_graph(alphabet)
    body = torch_graph(model)
    merged = onnx_compose.merge_models(front, body, io_map=[("ids", "ids")])
    imports = {(o.domain, o.version) for o in merged.opset_import}  # merge_models lists the default domain twice
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(imports))
    onnx.checker.check_model(merged, full_check=True)
    if {o.domain for o in merged.opset_import} - {"", "ai.onnx.ml", MS_DOMAIN}:
        raise ExportError([f"unexpected operator domains {sorted(o.domain for o in merged.opset_import)}"])
    return merged


def parity(graph, model, alphabet: list[str]) -> tuple[dict, list[str]]:
    """(the parity record, the problems): front-end ids (the texts together and each alone) and final probabilities
    against torch."""
    import onnxruntime as ort

    problems, checks = [], []
    front = ort.InferenceSession(tokenizer_graph(alphabet).SerializeToString(), providers=["CPUExecutionProvider"])
    texts = np.array(PARITY_TEXTS + ["".join(alphabet)] + alphabet[:30], dtype=object)
    together = np.array_equal(front.run(None, {"text": texts})[0], pad(encode(list(texts), alphabet)))
    alone = all(np.array_equal(front.run(None, {"text": texts[i:i + 1]})[0], pad(encode(list(texts[i:i + 1]),
                                                                                       alphabet)))
                for i in range(len(texts)))
    if not (together and alone):
        problems.append("tokenizer: the graph's character ids differ from texttokens.encode")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 33, len(texts)):
        part = texts[:batch]
        got = session.run(None, {"text": part})[0]
        want = predict(model, encode(list(part), alphabet))
        diff = float(np.abs(got - want).max())
        checks.append({"input_shapes": [[batch]], "max_abs_diff": diff, "max_scaled_diff": diff})
        if not diff <= ATOL:
            problems.append(f"probabilities at batch {batch}: max |onnx - torch| {diff:.2e} > atol {ATOL:g}")
    return {"rule": "max |onnx - torch| <= atol", "atol": ATOL, "checks": checks,
            "max_abs_diff": max(c["max_abs_diff"] for c in checks), "tokenizer_ids_equal": not problems}, problems


def export_text_run(run_dir: Path) -> tuple[object, dict, dict, list[str], dict]:
    """(graph, parity, ONNX test metrics, alphabet, config.json) of a finished text run; ExportError on a failure."""
    import onnxruntime as ort

    from training.config import RunConfig

    resolved, summary, alphabet, model = load_text_run(run_dir)
    graph = compose(model, alphabet)
    record, problems = parity(graph, model, alphabet)
    config = RunConfig.from_dict({k: v for k, v in resolved.items() if k not in ("network", "labels", "config_sha256")})
    texts = load_text(config)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    test = np.array(texts.texts("test"), dtype=object)
    probs = np.concatenate([session.run(None, {"text": test[i:i + 512]})[0] for i in range(0, len(test), 512)])
    onnx_metrics = classification_metrics(probs, texts.y("test"), len(resolved["labels"]))
    if abs(onnx_metrics["accuracy"] - summary.headline) > 0.001:
        problems.append(f"test accuracy: ONNX {onnx_metrics['accuracy']:.4f}, torch {summary.headline:.4f}")
    if problems:
        raise ExportError(problems)
    return graph, record, {"accuracy": onnx_metrics["accuracy"]}, alphabet, resolved


def build_text_metadata(run_dir: Path, name: str, version: int, record: dict, onnx_metrics: dict,
                        alphabet: list[str], resolved: dict) -> dict:
    import onnx
    import onnxruntime

    from training.runs import Summary

    summary = Summary.from_dict(json.loads((Path(run_dir) / "summary.json").read_text()))
    labels, network = resolved["labels"], resolved["network"]
    return {
        "schema_version": artifact.SCHEMA_VERSION, "name": name, "version": version,
        "architecture": resolved["arch"], "task": "multiclass",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1], "max_bytes": MAX_TEXT_BYTES}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]}],
        "labels": labels,
        "task_params": {"max_chars": MAX_CHARS, "alphabet_size": len(alphabet), "tokenizer": "characters",
                        "ngrams": f"2-{network['ngram_max']} characters, hashed into {network['ngram_buckets']} rows",
                        "runtime": "ONNX Runtime (the Tokenizer contrib op, domain com.microsoft)"},
        "preprocessing": {
            "in_graph": True, "input": "one UTF-8 string per sample",
            "before_graph": ["nothing: send the raw UTF-8 sentence"],
            "steps": ["a start character U+0002 in front (StringConcat)",
                      f"keep it and the first {MAX_CHARS} characters (Tokenizer, ONNX Runtime's com.microsoft "
                      "domain, regular-expression mode)", "lower-case (StringNormalizer, locale C.UTF-8)",
                      "split into characters, one per code point (Tokenizer, character mode)",
                      f"look each character up in an alphabet of {len(alphabet)} (LabelEncoder; the start "
                      "character: CLS; others: unknown)",
                      f"hash the character 2-{network['ngram_max']}-grams, pad and mask inside the network"],
            "input_shapes": {"text": f"a UTF-8 sentence of at most {MAX_TEXT_BYTES} bytes (the service's limit); "
                                     f"characters after the first {MAX_CHARS} are ignored"},
            "output": "class probabilities in the order of `labels`"},
        "training": {
            "dataset": summary.dataset, "dataset_source": summary.dataset_source,
            "dataset_description": summary.dataset_description, "split": summary.split, "seed": summary.seed,
            "headline_metric": "accuracy",
            "metrics": {**summary.metrics, **{f"onnx_test_{k}": v for k, v in onnx_metrics.items()}},
            "baseline": summary.baseline,
            "hyperparameters": {**{k: resolved[k] for k in ("model", "optimizer", "train", "data")},
                                "network": resolved["network"]},
            "config_sha256": resolved["config_sha256"], "best_epoch": summary.best_epoch,
            "epochs_run": summary.epochs_run, "train_seconds": summary.train_seconds,
            "library_versions": summary.library_versions, "created_at": summary.created_at},
        "export": {"opset": OPSET, "exporter": "torch.onnx dynamo, composed with a character front-end (onnx.compose)",
                   "library_versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                                        "onnxruntime": onnxruntime.__version__},
                   "parity": record},
    }


def publish_text_run(run_dir: Path, name: str, models_dir: Path, log: Callable[[str], None] = print) -> tuple[int, Path]:
    """Export, verify and publish a text run as the next version of `name` (model card, config.pbtxt, plots)."""
    from training.repository import model_card, publish_graph
    from training.textplots import confusion_plot, confusion_text

    graph, record, onnx_metrics, alphabet, resolved = export_text_run(run_dir)
    plot = confusion_plot(Path(run_dir))
    example = np.array(["Der Hund schläft im Garten."], dtype=object)
    version, path = publish_graph(
        models_dir, name, graph,
        lambda version: build_text_metadata(run_dir, name, version, record, onnx_metrics, alphabet, resolved),
        {f"plots/{plot.name}": plot.read_bytes()},
        lambda meta: model_card(meta, [f"plots/{plot.name}"], [example]) + "\n" + confusion_text(Path(run_dir)))
    log(f"   published {name} version {version} at {path} (max |onnx - torch| {record['max_abs_diff']:.1e})")
    return version, path
