"""The fit loop: data, model, optimizer and schedule, per-epoch metrics, checkpoints, test metrics and plots.

A run folder holds:
  config.json      the resolved RunConfig, plus the network's full hyperparameters and the data facts
  metrics.jsonl    one JSON line per epoch
  best.pt          state_dict of the best epoch by the monitored validation metric (weights_only=True)
  last.pt          everything to resume: weights, optimizer, schedule, RNG states, early-stopping state
  summary.json     split, test metrics, baseline, library versions, timings
  plots/*.png      loss and metric curves, and the task's own plot
`--resume` continues from last.pt and ends where an uninterrupted run would (same RNG stream).

Under torchrun (training/distributed.py) every process trains a DistributedDataParallel replica on its share of
each global batch of `train.batch_size`; rank 0 evaluates, decides and writes, and the others follow its decisions.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from training import architectures
from training.config import OptimizerConfig, RunConfig, ScheduleConfig
from training.data import (Dataset, Split, arrange, fold_split, load_dataset, split_by_time, split_indices,
                           standardization, windows)
from training.distributed import Distributed
from training.tasks import (TASK_SPECS, Network, ServedModel, compute_metrics, higher_is_better, loss_fn,
                            training_target)

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("none", "step", "cosine", "plateau")
PARTS = ("train", "val", "test")
EVAL_BATCH = 1024
RESOLVED_EXTRAS = ("network", "resolved_task", "form", "series", "labels", "config_sha256")  # config.json only


@dataclass
class Prepared:
    """The data of a run exactly as training and export see it: arranged, split, with its statistics."""

    data: Dataset
    task: str
    form: str
    split: Split
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray | None]
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float | None = None
    y_std: float | None = None
    window: int | None = None
    horizon: int | None = None

    @property
    def labels(self) -> list[str] | None:
        return self.data.labels


def resolve_task(config: RunConfig, data: Dataset) -> str:
    task = config.task or data.task
    if config.arch == "autoencoder" and not config.task:
        task = "anomaly"
    if config.arch == "gan" and not config.task:
        task = "generation"
    allowed = architectures.get_arch(config.arch).tasks
    if task not in allowed:
        raise ValueError(f"architecture {config.arch!r} does not do task {task!r}; it does {list(allowed)}")
    if data.kind == "series" and task != "forecasting":
        raise ValueError(f"dataset {data.name!r} is a series; its task is forecasting, not {task!r}")
    if task in ("multiclass", "binary", "generation") and not data.labels:
        raise ValueError(f"task {task!r} needs classes, and dataset {data.name!r} has none")
    return task


def prepare(config: RunConfig, fold: tuple[int, int] | None = None) -> Prepared:
    """Load, arrange and split the data of a run (deterministic: the seed and the config decide).

    `fold=(k, K)`: fold k of a K-fold cross-validation over the config's training and validation rows validates,
    the other folds train (tune's --folds); the test split is the config's own."""
    data = load_dataset(config.dataset, {**config.data, **({"task": config.task} if config.task else {})})
    task = resolve_task(config, data)
    form = architectures.input_form(config.arch, config.model)
    if data.kind == "series":
        if form != "sequence":
            raise ValueError(f"dataset {data.name!r} is a series; use a sequence architecture (rnn, lstm, gru, "
                             f"transformer), not {config.arch!r}")
        if fold is not None:
            raise ValueError(f"folds: dataset {data.name!r} is a series, validated on the windows after the training "
                             f"ones; shuffled k-fold cross-validation would train on its future")
        window, horizon = int(config.data.get("window", 24)), int(config.data.get("horizon", 1))
        inputs, targets = windows(data.X, window, horizon)
        split = split_by_time(len(inputs), config.split.val, config.split.test, config.seed)
        X = {p: inputs[getattr(split, p)] for p in PARTS}
        y = {p: targets[getattr(split, p)] for p in PARTS}
        train_values = data.X[:split.train[-1] + window + horizon]
        std = np.float32(max(float(np.diff(train_values).std()), 1e-6))  # scale of steps, not of levels
        return Prepared(data, task, form, split, X, y, np.float32(0.0), std, window=window, horizon=horizon)
    features = arrange(data, form)
    stratify = task in ("multiclass", "binary")
    split = split_indices(len(features), data.y, config.split.val, config.split.test, config.seed, stratify=stratify)
    if fold is not None:
        split = fold_split(split, data.y, *fold, stratify=stratify)
    X = {p: features[getattr(split, p)] for p in PARTS}
    y = {p: data.y[getattr(split, p)] for p in PARTS}
    x_mean, x_std = standardization(X["train"], form)
    prepared = Prepared(data, task, form, split, X, y, x_mean, x_std)
    if task == "regression":
        prepared.y_mean, prepared.y_std = float(y["train"].mean()), float(y["train"].std()) or 1.0
    return prepared


def out_features(prepared: Prepared) -> int | None:
    task = prepared.task
    if task in ("multiclass", "generation"):
        return len(prepared.labels)
    if task in ("binary", "regression"):
        return 1
    if task == "forecasting":
        return prepared.horizon
    return None


def build_network(config: RunConfig, prepared: Prepared) -> tuple[Network, dict]:
    """The network for a run, and the architecture's full hyperparameters (with the data's sizes)."""
    sample_shape = list(prepared.X["train"].shape[1:])
    if prepared.data.kind == "series":
        sample_shape = [prepared.window, 1]
    hyper = architectures.resolve_hyper(config.arch, config.model, sample_shape, out_features(prepared))
    body = architectures.build(config.arch, hyper)
    network = Network(body, torch.from_numpy(np.asarray(prepared.x_mean)), torch.from_numpy(np.asarray(prepared.x_std)),
                      prepared.y_mean, prepared.y_std, series=prepared.data.kind == "series")
    return network, hyper


def make_optimizer(cfg: OptimizerConfig, params) -> torch.optim.Optimizer:
    """The configured optimizer, with torch's fused kernel where it has one (sgd, adam, adamw).

    The fused kernel updates every parameter in one call instead of a Python loop of small ops per tensor, which
    is torch's default on CPU; the update is the same algorithm. bench.train_speed measured what it buys."""
    params = list(params)
    fusable = params and all(isinstance(p, torch.Tensor) and p.is_floating_point()
                             and p.device.type in ("cpu", "cuda") for p in params)
    fused = {"fused": True} if fusable else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "rmsprop":  # torch has no fused RMSprop
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}; valid optimizers are {list(OPTIMIZERS)}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state but keep this optimizer's kernel choice (`fused`, `foreach`).

    load_state_dict takes every setting of the saved param groups: a checkpoint from before the fused kernel
    would switch it off. The choice is set before loading, so that the state (Adam's step) is cast for it."""
    groups = [{**saved, **{key: optimizer.defaults[key] for key in ("fused", "foreach") if key in optimizer.defaults}}
              for saved in state["param_groups"]]
    optimizer.load_state_dict({**state, "param_groups": groups})


def make_schedule(cfg: ScheduleConfig, optimizer, epochs: int, maximize: bool):
    if cfg.name == "none":
        return None
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max" if maximize else "min",
                                                          factor=cfg.factor, patience=cfg.patience)
    raise ValueError(f"unknown schedule {cfg.name!r}; valid schedules are {list(SCHEDULES)}")


def library_versions() -> dict[str, str]:
    import sklearn

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}


def batched(fn: Callable, X: np.ndarray):
    """Apply `fn` to X in chunks and concatenate the outputs (tuples element-wise)."""
    outs = [fn(X[i:i + EVAL_BATCH]) for i in range(0, len(X), EVAL_BATCH)]
    if isinstance(outs[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*outs))
    return np.concatenate(outs)


def torch_predictor(model: nn.Module) -> Callable[[np.ndarray], np.ndarray | tuple]:
    """numpy in, numpy out, through a torch module in eval mode without gradients."""

    def predict(X: np.ndarray):
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(X)))
        return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()

    return predict


def evaluate_split(network: Network, prepared: Prepared, part: str, loss) -> dict[str, float]:
    """Loss (training units) and the task's metrics (data units) on one split."""
    task = prepared.task
    X, y = prepared.X[part], prepared.y[part]
    device = network.x_mean.device  # the CPU, or a data-parallel run's GPU
    network.eval()
    with torch.inference_mode():  # one forward pass gives both the loss and the served outputs
        xt = torch.from_numpy(X).to(device)
        yt = None if y is None else torch.from_numpy(y).to(device)
        raw = network(xt)
        value = float(loss(raw, training_target(task, network, xt, yt)))
        served = ServedModel(network, task).head(raw, xt)
    outputs = tuple(o.cpu().numpy() for o in served) if isinstance(served, tuple) else served.cpu().numpy()
    return {"loss": value, **compute_metrics(task, outputs, y)}


def test_metrics(task: str, predict: Callable, prepared: Prepared, eval_cfg: dict, seed: int) -> dict[str, float]:
    """Headline test metrics through `predict` (torch or ONNX Runtime: the same function scores both)."""
    outputs = batched(predict, prepared.X["test"])
    metrics = compute_metrics(task, outputs, prepared.y["test"])
    if task == "anomaly":
        metrics.update(anomaly_metrics(predict, prepared, eval_cfg, seed))
    return metrics


def noisy_copy(X: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """The same samples with heavy Gaussian noise, clipped to the data's range (the anomalies to find)."""
    rng = np.random.default_rng(seed)
    return np.clip(X + rng.normal(0, noise, X.shape), X.min(), X.max()).astype(np.float32)


def anomaly_metrics(predict: Callable, prepared: Prepared, eval_cfg: dict, seed: int) -> dict[str, float]:
    """Threshold from the training reconstruction errors; ROC AUC of clean test samples against noisy ones."""
    from sklearn.metrics import roc_auc_score

    quantile = float(eval_cfg.get("quantile", 0.99))
    noise = float(eval_cfg.get("noise", 4.0))
    train_scores = batched(predict, prepared.X["train"])[1]
    threshold = float(np.quantile(train_scores, quantile))
    clean = batched(predict, prepared.X["test"])[1]
    noisy = batched(predict, noisy_copy(prepared.X["test"], noise, seed))[1]
    scores = np.concatenate([clean, noisy])
    truth = np.concatenate([np.zeros(len(clean)), np.ones(len(noisy))])
    return {"roc_auc": float(roc_auc_score(truth, scores)), "threshold": threshold,
            "clean_flagged": float((clean > threshold).mean()), "noisy_flagged": float((noisy > threshold).mean())}


class Progress:
    """A tqdm bar per epoch over its batches (stderr), or nothing when quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def bar(self, total: int, epoch: int, epochs: int):
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=False, disable=self.quiet,
                    file=sys.stderr, dynamic_ncols=True)


def save_checkpoint(obj, path: Path) -> None:
    """torch.save beside, then rename: a run killed mid-write keeps its previous checkpoint whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state()}


def fit(config: RunConfig, out: Path, log: Callable[[str], None] = print, quiet: bool = True,
        resume: bool = False, stop_after: int | None = None, distributed: Distributed | None = None,
        epoch_callback: Callable[[int, dict], None] | None = None, fold: tuple[int, int] | None = None) -> dict:
    """Train `config` into the run folder `out`; return the summary (also written to summary.json).

    `stop_after` ends the run after that many epochs without finishing it (as if killed), for tests.
    `epoch_callback(epoch, row)` is called after each epoch's validation and checkpoint with that epoch's
    metrics.jsonl row; an exception it raises ends the run and propagates (tune uses it to prune trials).
    `distributed` (a torchrun launch, from training.distributed.from_environment) trains data-parallel:
    `train.batch_size` stays the global batch, each of the world_size processes takes an equal share of it.
    `fold=(k, K)` trains and validates on fold k of a K-fold cross-validation (see prepare).
    """
    if config.arch == "gan":
        if distributed is not None:
            raise ValueError("the GAN (arch 'gan') trains in a single process only; run it without torchrun")
        from training.gan import fit_gan

        return fit_gan(config, out, log=log, quiet=quiet, resume=resume, stop_after=stop_after)
    started = time.perf_counter()
    if config.train.epochs < 1:
        raise ValueError(f"train.epochs: expected at least 1, got {config.train.epochs}")
    world = distributed.world_size if distributed else 1
    if config.train.batch_size % world:
        raise ValueError(f"train.batch_size: {config.train.batch_size} is the global batch and must divide evenly "
                         f"among the {world} processes; choose a multiple of {world}")
    main = distributed is None or distributed.main
    if not main:  # rank 0 alone logs and shows progress
        log, quiet = (lambda _msg: None), True
    device = distributed.device if distributed else torch.device("cpu")
    torch.manual_seed(config.seed)
    prepared = prepare(config, fold)
    task = prepared.task
    network, hyper = build_network(config, prepared)
    network.to(device)
    model = distributed.wrap(network) if distributed else network  # what the training step calls
    optimizer = make_optimizer(config.optimizer, network.parameters())
    monitor = config.train.monitor
    maximize = higher_is_better(monitor)
    schedule = make_schedule(config.schedule, optimizer, config.train.epochs, maximize)
    loss = loss_fn(task)
    generator = torch.Generator().manual_seed(config.seed)
    state = {"epoch": 0, "best": -math.inf if maximize else math.inf, "best_epoch": 0, "stale": 0}

    checkpoint = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_resolved_config(config, prepared, hyper, out)
        if resume and (out / "last.pt").exists():
            checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    if distributed:  # every rank resumes from rank 0's checkpoint: the run folder need not be shared storage
        checkpoint = distributed.broadcast(checkpoint)
    if checkpoint is not None:
        network.load_state_dict(checkpoint["model"])
        load_optimizer_state(optimizer, checkpoint["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(checkpoint["schedule"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        generator.set_state(checkpoint["rng"]["generator"])
        state = checkpoint["state"]
        log(f"resuming {out} after epoch {state['epoch']}")
    elif main:  # an earlier run's checkpoints in this folder are not ours: --resume must not pick them up later
        for name in ("last.pt", "best.pt"):
            (out / name).unlink(missing_ok=True)
    history = read_history(out, state["epoch"]) if main else []

    X_train = torch.from_numpy(prepared.X["train"]).to(device)
    y_train = None if prepared.y["train"] is None else torch.from_numpy(prepared.y["train"]).to(device)
    progress = Progress(quiet)
    batch = config.train.batch_size // world  # this process's share of each global batch
    epochs_this_call = 0
    best_weights = None  # the best epoch's weights, until the next checkpoint writes them
    last_checkpoint = time.perf_counter()
    with open(out / "metrics.jsonl" if main else os.devnull, "w") as metrics_file:
        for row in history:
            metrics_file.write(json.dumps(row) + "\n")
        for epoch in range(state["epoch"] + 1, config.train.epochs + 1):
            if state["stale"] and config.train.patience and state["stale"] >= config.train.patience:
                break
            model.train()
            order = torch.randperm(len(X_train), generator=generator)
            if distributed:  # the same order on every rank (same generator); each takes its share of every batch
                order = distributed.shard(order)
                distributed.seed_epoch(config.seed, epoch)
            total, seen = 0.0, 0
            with progress.bar(math.ceil(len(order) / batch), epoch, config.train.epochs) as bar:
                for i in range(0, len(order), batch):
                    idx = order[i:i + batch]
                    xb = X_train[idx]
                    target = training_target(task, network, xb, None if y_train is None else y_train[idx])
                    optimizer.zero_grad(set_to_none=True)
                    value = loss(model(xb), target)
                    value.backward()
                    if config.train.grad_clip > 0:
                        nn.utils.clip_grad_norm_(network.parameters(), config.train.grad_clip)
                    optimizer.step()
                    total += value.detach() * len(idx)  # summed as a tensor: no per-batch sync and conversion
                    seen += len(idx)
                    if not quiet:
                        bar.update(1)
                        bar.set_postfix(loss=f"{float(total) / seen:.4f}")
            if distributed:  # the mean over every rank's samples; rank 0 evaluates and every rank takes its row
                total, seen = distributed.sum(total, seen)
            val = evaluate_split(network, prepared, "val", loss) if main else {}
            row = {"epoch": epoch, "train_loss": float(total) / seen, **{f"val_{k}": v for k, v in val.items()},
                   "lr": optimizer.param_groups[0]["lr"]}
            if distributed:  # so that the best epoch, early stopping and the schedule decide alike everywhere
                row = distributed.broadcast(row)
            if monitor not in row:
                raise ValueError(f"train.monitor: {monitor!r} is not measured for task {task!r}; "
                                 f"choose one of {sorted(k for k in row if k.startswith('val_'))}")
            current = row[monitor]
            improved = current > state["best"] if maximize else current < state["best"]
            if improved:
                state.update(best=current, best_epoch=epoch, stale=0)
                best_weights = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
            else:
                state["stale"] += 1
            if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                schedule.step(current)
            elif schedule is not None:
                schedule.step()
            state["epoch"] = epoch
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            stopping = bool(config.train.patience) and state["stale"] >= config.train.patience
            # Checkpoints cost more than a small model's epoch: written at most every checkpoint_seconds (a killed
            # run resumes from the last one and replays the epochs after it exactly), and always at the end.
            if main and (epoch == config.train.epochs or stopping or config.train.checkpoint_seconds <= 0
                         or time.perf_counter() - last_checkpoint >= config.train.checkpoint_seconds):
                if best_weights is not None:  # before last.pt, whose state names the best epoch
                    save_checkpoint(best_weights, out / "best.pt")
                    best_weights = None
                save_checkpoint({"model": {k: v.cpu() for k, v in network.state_dict().items()},
                                 "optimizer": optimizer.state_dict(),
                                 "schedule": schedule.state_dict() if schedule is not None else {},
                                 "rng": _rng_state(generator), "state": state}, out / "last.pt")
                last_checkpoint = time.perf_counter()
            log(f"epoch {epoch:3d}/{config.train.epochs}  train_loss {row['train_loss']:.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
                + ("  *" if improved else ""))
            if epoch_callback is not None:
                epoch_callback(epoch, row)
            epochs_this_call += 1
            if stop_after is not None and epochs_this_call >= stop_after:
                return {}
            if config.train.patience and state["stale"] >= config.train.patience:
                log(f"early stop: no better {monitor} for {state['stale']} epochs")
                break

    replicas = distributed.check_replicas(network) if distributed else None
    if not main:
        return distributed.broadcast(None)  # rank 0's summary, once it has written the run folder
    network.to("cpu")
    network.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    served = ServedModel(network, task)
    test = test_metrics(task, torch_predictor(served), prepared, config.eval, config.seed)
    val = evaluate_split(network, prepared, "val", loss)
    summary = finish_run(config, prepared, out, started, state, test, {f"val_{k}": v for k, v in val.items()},
                         distributed=replicas)
    from training.plots import plot_run

    plot_run(out, prepared, served, config)
    log(format_result(summary))
    return distributed.broadcast(summary) if distributed else summary


def write_resolved_config(config: RunConfig, prepared: Prepared, hyper: dict, out: Path) -> None:
    resolved = {**config.to_dict(), "network": hyper, "resolved_task": prepared.task, "form": prepared.form,
                "series": prepared.data.kind == "series", "labels": prepared.labels,
                "config_sha256": config.sha256()}
    (out / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")


def read_history(out: Path, last_epoch: int) -> list[dict]:
    """Epoch rows already written, up to `last_epoch` (a killed run may have written one more)."""
    path = out / "metrics.jsonl"
    if last_epoch == 0 or not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= last_epoch]


def finish_run(config: RunConfig, prepared: Prepared, out: Path, started: float, state: dict,
               test: dict, val: dict, distributed: dict | None = None) -> dict:
    from training.baselines import best_baseline

    spec = TASK_SPECS[prepared.task]
    baseline = best_baseline(prepared, config)
    summary = {
        "name": config.name,
        "dataset": prepared.data.name,
        "dataset_source": prepared.data.source,
        "dataset_description": prepared.data.description,
        "task": prepared.task,
        "split": prepared.split.describe(),
        "seed": config.seed,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "headline_metric": spec.metric,
        "metrics": {**{f"test_{k}": v for k, v in test.items()}, **val},
        "baseline": baseline,
        "library_versions": library_versions(),
        "train_seconds": round(time.perf_counter() - started, 3),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if distributed:  # world size, backend, and the replica check (training/distributed.py)
        summary["distributed"] = distributed
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_result(summary: dict) -> str:
    metric = summary["headline_metric"]
    line = f"{summary['name']}: test {metric} {summary['metrics'][f'test_{metric}']:.4f}"
    if summary.get("baseline"):
        line += f"  (best baseline {summary['baseline']['name']}: {summary['baseline']['value']:.4f})"
    return line


def load_trained(run_dir: Path) -> tuple[dict, dict, nn.Module]:
    """(config.json, summary.json, the best network in eval mode) of a finished run."""
    run_dir = Path(run_dir)
    try:
        resolved = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{run_dir} is not a finished run folder: {Path(exc.filename).name} is missing") from None
    state = torch.load(run_dir / "best.pt", weights_only=True)
    if resolved["arch"] == "gan":
        from training.gan import load_generator

        return resolved, summary, load_generator(resolved, state)
    body = architectures.build(resolved["arch"], resolved["network"])
    network = Network(body, state["x_mean"], state["x_std"], state["y_mean"], state["y_std"],
                      series=resolved["series"])
    network.load_state_dict(state)
    network.eval()
    return resolved, summary, network


def config_of(resolved: dict) -> RunConfig:
    """The RunConfig inside a resolved config.json."""
    return RunConfig.from_dict({k: v for k, v in resolved.items()
                                if k not in RESOLVED_EXTRAS})
