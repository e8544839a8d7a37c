"""Publish an exported run as the next version of a model: metadata, model card, plots and Triton's config.pbtxt,
written beside and renamed into place, and refused when its signature differs from the published version's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from service import artifact
from training.export import OPSET, Exported
from training.network import series_scaling
from training.runs import Resolved, Summary
from training.tasks import get_task


class SignatureChanged(ValueError):
    """Publishing was refused: the new version's inputs or outputs differ from the latest published version's, which
    clients of the model are written against; `changes` lists each difference. Nothing was published. A ValueError,
    so that a command that does not catch it still ends with its one-line message."""

    def __init__(self, name: str, version: int, latest: int, changes: list[str]):
        self.changes = changes
        super().__init__(f"{name}: not published: version {version} would change the signature of version {latest}, "
                         f"which clients of '{name}' rely on: {'; '.join(changes)} (publish it under another name, "
                         "or use --force to publish anyway)")


PREPROCESSING = {  # inside the graph: a client sends values without these
    "table": "standardize each feature with the training split's mean and std",
    "image": "standardize each channel with the training split's mean and std",
    "sequence": "standardize each token feature with the training split's mean and std",
    "series": "scale the window relative to its last value: (x - x[-1]) / std of the training steps",
    "series-diff": "scale the window's first differences: (x[t] - x[t-1]) / std of the training steps, 0 at the first "
                   "step; the forecast is added to the window's last value",
    "stream": "scale each new value's difference from the one before it (kept in the state prev): (x[t] - x[t-1]) / "
              "std of the training steps, 0 at a sequence's first value; the forecast is added to the last value sent",
}
SCALED_FORMS = ("series", "series-diff", "stream")  # scaled by the spread of the steps, not standardized
IN_GRAPH_NOTE = ("nothing more: the graph itself does the {what} (send values that are not {done}); "
                 "see preprocessing.steps")


def _preprocessing(plan, task, form: str) -> dict:
    """What a client does before the graph, and what the graph itself does, so that it can reproduce the chain."""
    scaled = form in SCALED_FORMS
    note = [IN_GRAPH_NOTE.format(what="scaling" if scaled else "standardization",
                                 done="scaled" if scaled else "standardized")] if plan.before_graph else []
    return {"in_graph": True, "input": task.served_input, "before_graph": plan.before_graph + note,
            "steps": [PREPROCESSING[form]] if task.in_graph_preprocessing else [],
            "input_shapes": plan.input_shapes, "output": task.output_text}


def _form(resolved: Resolved, plan) -> str:
    """The key of the graph's preprocessing in PREPROCESSING."""
    if plan.sequence is not None:
        return "stream"
    if resolved.series:
        return "series-diff" if series_scaling(resolved.config.data) == "diff" else "series"
    return resolved.form


def _training(exported: Exported, resolved: Resolved, summary: Summary) -> dict:
    """The training section: the data as the plan records it, the split, the metrics (torch's and ONNX's)."""
    dataset = exported.plan.dataset or {"name": summary.dataset, "source": summary.dataset_source,
                                        "description": summary.dataset_description}
    config = resolved.config.to_dict()
    return {
        "dataset": dataset["name"],
        "dataset_source": dataset["source"],
        "dataset_description": dataset["description"],
        "split": summary.split,
        "seed": summary.seed,
        "headline_metric": summary.headline_metric,
        "metrics": {**summary.metrics, **{f"onnx_test_{k}": v for k, v in exported.onnx_metrics.items()}},
        "baseline": summary.baseline,
        "hyperparameters": {**{k: config[k] for k in ("model", "optimizer", "schedule", "train", "data", "eval")},
                            "network": resolved.network},
        "config_sha256": resolved.config_sha256,
        "best_epoch": summary.best_epoch,
        "epochs_run": summary.epochs_run,
        "train_seconds": summary.train_seconds,
        "library_versions": summary.library_versions,
        "created_at": summary.created_at,
    }


def build_metadata(exported: Exported, resolved: Resolved, summary: Summary, name: str, version: int) -> dict:
    """The artifact metadata of one version (the `files` section is added when the bytes exist).

    The data is named as the plan records it (the file's or folder's own name, never a local path); `features`
    names a table's inputs in order; `preprocessing.before_graph` lists what a client does to raw data and
    `preprocessing.steps` what the graph itself does, so a client can reproduce the whole chain."""
    import onnx
    import onnxruntime

    task = get_task(resolved.resolved_task)
    plan = exported.plan
    return {
        "schema_version": artifact.SCHEMA_VERSION,
        "name": name,
        "version": version,
        "architecture": resolved.config.arch,
        "task": task.name,
        "inputs": plan.client_inputs,
        "outputs": plan.client_outputs,
        **({"sequence": plan.sequence} if plan.sequence else {}),
        **({"labels": resolved.labels} if resolved.labels else {}),
        **({"features": plan.features} if plan.features else {}),
        "task_params": plan.task_params,
        "preprocessing": _preprocessing(plan, task, _form(resolved, plan)),
        "training": _training(exported, resolved, summary),
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


def publish(exported: Exported, resolved: Resolved, summary: Summary, name: str, models_dir: Path,
            run_dir: Path | None = None, force: bool = False,
            log: Callable[[str], None] = print) -> tuple[int, Path]:
    """Publish the next version of `name` into `models_dir` (written beside, then renamed into place).

    The version holds model.onnx, metadata.json, a model card and the run's plots; the model's folder gets
    Triton's config.pbtxt for the new version's tensors. A version whose signature (input and output names,
    datatypes and dims, and a table's feature order) differs from the latest published version's raises
    SignatureChanged and publishes nothing, unless `force`, when the changes are logged and it is published.
    """
    from training.repository import model_card, publish_graph

    plots = sorted((Path(run_dir) / "plots").glob("*.png")) if run_dir else []
    model_dir = Path(models_dir) / name

    def metadata(version: int) -> dict:
        meta = build_metadata(exported, resolved, summary, name, version)
        earlier = [v for v in artifact.list_versions(model_dir) if v < version]  # under the publish lock
        old = published_signature(model_dir / str(earlier[-1])) if earlier else None
        changes = signature_changes(old, _signature(meta)) if old is not None else []
        if changes and not force:
            raise SignatureChanged(name, version, earlier[-1], changes)
        if changes:
            log(f"{name}: publishing version {version} although its signature differs from version {earlier[-1]} "
                f"(--force): {'; '.join(changes)}")
        return meta

    files = {f"plots/{p.name}": p.read_bytes() for p in plots}
    return publish_graph(models_dir, name, exported.model, metadata, files,
                         lambda meta: model_card(meta, [f"plots/{p.name}" for p in plots], list(exported.plan.example)))
