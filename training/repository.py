"""The model repository from training's side: model cards, Triton's config.pbtxt, and `check`.

`check` validates any repository the way the service will read it, foreign models included (config.pbtxt
auto-completed and checked against the graph, the file's safety, warm-up), and nnserve's own artifacts more
strictly: schema, files and their hashes, the embedded metadata against metadata.json, the config.pbtxt export
wrote, and that no half-written version is lying around.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from service import artifact
from service.modelconfig import DATA_TYPES
from training.stream_card import STREAM_MAX_BATCH_SIZE, graph_names, sequence_batching_pbtxt, stream_card_lines

CARD_FILENAME = "model_card.md"
TRITON_CONFIG = "config.pbtxt"
MAX_BATCH_SIZE = 256  # the largest batch Triton's config admits; the service's default max_batch_size
TRITON_TYPES = {datatype: data_type for data_type, datatype in DATA_TYPES.items()}  # V2 -> config.pbtxt


def _tensor_pbtxt(spec: dict) -> str:
    dims = spec["shape"][1:]  # with max_batch_size > 0 the batch dim is implicit
    text = f'  {{\n    name: "{spec["name"]}"\n    data_type: {TRITON_TYPES[spec["datatype"]]}\n'
    if dims:
        text += f"    dims: [ {', '.join(str(d) for d in dims)} ]\n"
    else:  # Triton has no empty dims: a per-sample scalar is [1], reshaped to [] for the model
        text += "    dims: [ 1 ]\n    reshape: { shape: [ ] }\n"
    return text + "  }"


# On, as Triton's auto-complete turns it on for a model that can batch: a request that finds the session idle runs
# at once, and requests that queue while it runs go together in the next run (docs/performance.md).
DYNAMIC_BATCHING = "dynamic_batching { }\n"


def triton_config(meta: dict) -> str:
    """Triton's config.pbtxt for a model, from its metadata (same repository, served by Triton unchanged); a step
    graph's declares the sequence batcher's START control and implicit state instead of the dynamic batcher."""
    inputs = ",\n".join(_tensor_pbtxt(t) for t in meta["inputs"])
    outputs = ",\n".join(_tensor_pbtxt(t) for t in meta["outputs"])
    sequence = meta.get("sequence")
    batching = DYNAMIC_BATCHING if sequence is None else sequence_batching_pbtxt(sequence)
    max_batch = MAX_BATCH_SIZE if sequence is None else STREAM_MAX_BATCH_SIZE
    return (f'# Written by nnserve for Triton Inference Server ({meta["architecture"]}, {meta["task"]}).\n'
            f'name: "{meta["name"]}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n{batching}")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _example_request(meta: dict, examples: list) -> str:
    """A V2 JSON request for one real sample (the export example, from the test split)."""
    tensors = [{"name": spec["name"], "shape": [1, *list(x.shape[1:])], "datatype": spec["datatype"],
                "data": [round(v, 4) if isinstance(v, float) else v for v in x[:1].reshape(-1).tolist()]}
               for spec, x in zip(meta["inputs"], examples)]
    return json.dumps({"inputs": tensors})


def _quality(meta: dict) -> list[str]:
    """The card's test metrics (torch and ONNX), the best baseline, and the export's parity."""
    training = meta["training"]
    metrics = training["metrics"]
    headline = training["headline_metric"]
    baseline = training.get("baseline")
    lines = ["## Quality on the held-out test split", "",
              f"Split: {training['split']['method']}, seed {training['seed']}, {training['split']['train']} train / "
              f"{training['split']['val']} validation / {training['split']['test']} test.", "",
              "| metric | torch | exported ONNX |", "|---|---:|---:|"]
    for key, value in metrics.items():
        if key.startswith("test_"):
            lines.append(f"| {key[5:]}{' (headline)' if key[5:] == headline else ''} | {_fmt(value)} | "
                         f"{_fmt(metrics.get('onnx_' + key, '-'))} |")
    if baseline:
        lines += ["", f"Best classic baseline on the same split: **{baseline['name']}**, {headline} "
                  f"{_fmt(baseline['value'])} (all: " + ", ".join(f"{k} {_fmt(v)}" for k, v in baseline["all"].items())
                  + ")."]
    parity = meta["export"]["parity"]
    checked = (f"max |onnx - torch| {parity['max_abs_diff']:.2e} over {len(parity['checks'])} input shapes "
               f"(rule: {parity['rule']}, atol {parity['atol']:g})") if "max_abs_diff" in parity else \
        f"{len(parity['checks'])} requests checked (rule: {parity['rule']})"
    lines += ["", "## Export", "", f"{meta['export']['exporter']}, opset {meta['export']['opset']}; {checked}.", "",
              f"Trained {training['epochs_run']} epochs (best {training['best_epoch']}) in "
              f"{training['train_seconds']:.0f} s with torch {training['library_versions']['torch']}, "
              f"created {training['created_at']}.", ""]
    return lines


def model_card(meta: dict, plots: list[str], examples: list) -> str:
    """A Markdown card: what the model does, its tensors with an example request, metrics, baseline, plots.

    `examples` holds one array per input (a real sample first), for the example request."""
    if meta.get("sequence"):
        return "\n".join(stream_card_lines(meta, [float(v) for v in examples[0][0, :2]]) + _quality(meta))
    training = meta["training"]
    preprocessing = meta["preprocessing"]
    lines = [f"# {meta['name']} version {meta['version']}", "",
             f"A `{meta['architecture']}` model for **{meta['task']}**, trained on {training['dataset_description']}.",
             ""]
    if preprocessing.get("before_graph"):
        lines += ["## Preprocessing", "", "Before the graph (a client does these to its raw data, in this order):", ""]
        lines += [f"{i}. {step}" for i, step in enumerate(preprocessing["before_graph"], start=1)]
        lines += [""]
    lines += [f"Preprocessing inside the graph: {'; '.join(preprocessing['steps']) or 'none'}. "
              f"Output: {preprocessing['output']}.", ""]
    if meta.get("features"):
        lines += [f"Features, in input order ({len(meta['features'])}): "
                  + ", ".join(f"`{f}`" for f in meta["features"]) + ".", ""]
    if meta.get("labels"):
        lines += [f"Classes: {', '.join(meta['labels'])}.", ""]
    if meta.get("task_params"):
        lines += ["Task parameters: " + ", ".join(f"`{k}` = {_fmt(v)}" for k, v in meta["task_params"].items()), ""]
    lines += ["## Inputs and outputs", "", "| kind | name | datatype | shape (-1: any size) |", "|---|---|---|---|"]
    lines += [f"| {kind} | `{t['name']}` | {t['datatype']} | {t['shape']} |"
              for kind, tensors in (("input", meta["inputs"]), ("output", meta["outputs"])) for t in tensors]
    shapes = preprocessing.get("input_shapes") or {}
    if shapes:
        lines += [""] + [f"- `{name}`: {text}" for name, text in shapes.items()]
    lines += ["", "Example request (Open Inference Protocol, JSON):", "", "```sh",
              f"curl -s http://127.0.0.1:8080/v2/models/{meta['name']}/versions/{meta['version']}/infer "
              f"-d '{_example_request(meta, examples)}'", "```", ""]
    if meta.get("features"):
        row = {f: round(v, 4) for f, v in zip(meta["features"], examples[0][:1].reshape(-1).tolist())}
        lines += ["Or by feature name, on the convenience endpoint:", "", "```sh",
                  f"curl -s http://127.0.0.1:8080/v1/models/{meta['name']}:predict "
                  f"-d '{json.dumps({'instances': [row]})}'", "```", ""]
    lines += _quality(meta)
    if plots:
        lines += ["## Training plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _serve_problems(version_dir: Path) -> list[str]:
    """What the service says when it loads the version (config.pbtxt auto-completed and checked, warm-up run)."""
    from service.runtime import LoadError, load_model

    try:
        load_model(version_dir, device="cpu")
    except LoadError as exc:
        return [str(exc)]
    return []


def check_version(version_dir: Path) -> list[str]:
    """Every problem of one published version, each naming the file and what is wrong. A version without nnserve's
    metadata.json (a model from elsewhere) is checked as the service loads it."""
    import onnx
    import onnxruntime as ort

    if not (version_dir / artifact.METADATA_FILENAME).exists():
        return _serve_problems(version_dir)
    try:
        meta = artifact.read_metadata(version_dir)
    except artifact.MetadataError as exc:
        return exc.problems
    problems = []
    listed = set(meta["files"])
    present = {str(p.relative_to(version_dir)) for p in version_dir.rglob("*") if p.is_file()}
    for filename in sorted(listed - present):
        problems.append(f"{filename}: listed in metadata.json but missing")
    for filename in sorted(present - listed - {artifact.METADATA_FILENAME}):
        problems.append(f"{filename}: not listed in metadata.json")
    for filename in sorted(listed & present):
        problems += artifact.verify_model_bytes(meta, (version_dir / filename).read_bytes(), filename)
    if problems:
        return problems
    data = (version_dir / artifact.MODEL_FILENAME).read_bytes()
    model = onnx.load_from_string(data)
    embedded = {p.key: p.value for p in model.metadata_props}.get(artifact.METADATA_PROP)
    if embedded is None:
        problems.append(f"{artifact.MODEL_FILENAME}: no embedded metadata under '{artifact.METADATA_PROP}'")
    elif json.loads(embedded) != artifact.embedded_view(meta):
        problems.append(f"{artifact.MODEL_FILENAME}: embedded metadata differs from metadata.json")
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several types for a bad graph
        return problems + [f"{artifact.MODEL_FILENAME}: ONNX Runtime cannot load it: {str(exc)[:200]}"]
    names = ([t["name"] for t in meta["inputs"]], [t["name"] for t in meta["outputs"]])
    if meta.get("sequence"):  # the server feeds START and the states: config.pbtxt's, not the client's
        names = graph_names(meta["sequence"], *names)
    for kind, listed, nodes in (("inputs", names[0], session.get_inputs()), ("outputs", names[1], session.get_outputs())):
        if listed != [n.name for n in nodes]:
            who = "metadata and its sequence section list" if meta.get("sequence") else "metadata lists"
            problems.append(f"{kind}: {who} {listed}, the graph has {[n.name for n in nodes]}")
    return problems or _serve_problems(version_dir)


def check_repository(repo: Path) -> list[str]:
    """Every problem in a repository, as 'model/version: problem' lines; empty when all is well."""
    repo = Path(repo)
    if not repo.is_dir():
        return [f"{repo}: not a folder"]
    problems = []
    for entry in sorted(os.scandir(repo), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        if not artifact.is_valid_name(entry.name):
            problems.append(f"{entry.name}: not a valid model name, the service ignores it")
            continue
        model_dir = Path(entry.path)
        versions = artifact.list_versions(model_dir)
        if not versions:
            problems.append(f"{entry.name}: no published version")
        for child in sorted(model_dir.iterdir()):
            if child.name.startswith(artifact.TMP_PREFIX):
                problems.append(f"{entry.name}/{child.name}: a partial version left by an interrupted publish "
                                "(never served; the next publish removes it)")
            elif child.is_dir() and not artifact.is_valid_version(child.name):
                problems.append(f"{entry.name}/{child.name}: not a version number, the service ignores it")
        for version in versions:
            problems += [f"{entry.name}/{version}: {p}" for p in check_version(model_dir / str(version))]
        if versions and (model_dir / str(versions[-1]) / artifact.METADATA_FILENAME).exists():  # nnserve's own
            config = model_dir / TRITON_CONFIG
            try:
                latest = artifact.read_metadata(model_dir / str(versions[-1]))
            except artifact.MetadataError:
                latest = None  # already reported above
            if not config.exists():
                problems.append(f"{entry.name}/{TRITON_CONFIG}: missing (Triton could not serve this model)")
            elif latest is not None and config.read_text() != triton_config(latest):
                problems.append(f"{entry.name}/{TRITON_CONFIG}: does not match the latest version's tensors")
    return problems


def publish_graph(models_dir: Path, name: str, graph, metadata: Callable[[int], dict], files: dict[str, bytes],
                  card: Callable[[dict], str]) -> tuple[int, Path]:
    """Publish `graph` as the next version of `name`: `metadata(version)` (which may refuse the version by
    raising) is embedded in the graph and written beside it with `files` (the plots) and `card(meta)`, checked, and
    published atomically with Triton's config.pbtxt for it."""
    import onnx

    metas: dict[int, dict] = {}

    def build(version: int) -> dict[str, bytes]:
        meta = metadata(version)
        del graph.metadata_props[:]
        onnx.helper.set_model_props(graph, {artifact.METADATA_PROP: json.dumps(meta, sort_keys=True)})
        graph.producer_name = "nnserve"
        written = {artifact.MODEL_FILENAME: graph.SerializeToString(), **files}
        written[CARD_FILENAME] = card(meta).encode()
        meta["files"] = artifact.file_entries(written)
        artifact.check_metadata(meta, f"{name} version {version}")
        metas[version] = meta
        return {**written, artifact.METADATA_FILENAME: artifact.dumps(meta).encode()}

    return artifact.publish_version(models_dir, name, build,
                                    lambda version: {TRITON_CONFIG: triton_config(metas[version]).encode()})
