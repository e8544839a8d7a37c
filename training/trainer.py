"""The fit loop: data, model, optimizer, per-epoch metrics, best/last checkpoints and test metrics in a run folder.

A run folder holds:
  config.json      the resolved RunConfig, plus the network's full hyperparameters and the dataset facts
  metrics.jsonl    one JSON line per epoch
  best.pt          state_dict of the best epoch by validation metric (loads with weights_only=True)
  last.pt          state_dict, optimizer state and epoch of the last epoch
  summary.json     split, test metrics, library versions, timings
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from training.architectures import build_network
from training.config import OptimizerConfig, RunConfig
from training.data import Dataset, Split, load_dataset, split_dataset, standardization

OPTIMIZERS = ("sgd", "adam", "rmsprop")


def make_optimizer(cfg: OptimizerConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}; valid optimizers are {list(OPTIMIZERS)}")


def library_versions() -> dict[str, str]:
    import sklearn

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}


def network_hyper(config: RunConfig, data: Dataset) -> dict:
    """The architecture's hyperparameters with the sizes the data dictates filled in."""
    return {"in_features": int(data.X.shape[1]), "out_features": len(data.labels), **config.model}


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn) -> dict[str, float]:
    """Loss and accuracy of a classifier on one split."""
    model.eval()
    logits = model(X)
    return {"loss": float(loss_fn(logits, y)), "accuracy": int((logits.argmax(-1) == y).sum()) / len(y)}


def prepare(config: RunConfig) -> tuple[Dataset, Split]:
    """The dataset and its split, exactly as the run (and later its export) sees them."""
    data = load_dataset(config.dataset)
    return data, split_dataset(data, config.split.val, config.split.test, config.seed)


def fit(config: RunConfig, out: Path, log: Callable[[str], None] = print) -> dict:
    """Train `config` into the run folder `out`; return the summary (also written to summary.json)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    data, split = prepare(config)
    if data.task != "multiclass":
        raise ValueError(f"dataset {config.dataset!r} has task {data.task!r}; this trainer handles multiclass")
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    X_train, y_train = X[split.train], y[split.train]
    X_val, y_val = X[split.val], y[split.val]
    mean, std = standardization(data.X[split.train])
    hyper = network_hyper(config, data)
    model = build_network(config.arch, hyper, torch.from_numpy(mean), torch.from_numpy(std))
    optimizer = make_optimizer(config.optimizer, model.parameters())
    loss_fn = nn.CrossEntropyLoss()

    out.mkdir(parents=True, exist_ok=True)
    resolved = {**config.to_dict(), "network": hyper, "task": data.task, "labels": data.labels,
                "config_sha256": config.sha256()}
    (out / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    generator = torch.Generator().manual_seed(config.seed)
    best, best_epoch, stale = -1.0, 0, 0
    batch = config.train.batch_size
    with open(out / "metrics.jsonl", "w") as metrics_file:
        for epoch in range(1, config.train.epochs + 1):
            model.train()
            order = torch.randperm(len(X_train), generator=generator)
            total, seen = 0.0, 0
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(X_train[idx]), y_train[idx])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            val = evaluate(model, X_val, y_val, loss_fn)
            row = {"epoch": epoch, "train_loss": total / seen, "val_loss": val["loss"],
                   "val_accuracy": val["accuracy"]}
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            improved = val["accuracy"] > best
            if improved:
                best, best_epoch, stale = val["accuracy"], epoch, 0
                torch.save(model.state_dict(), out / "best.pt")
            else:
                stale += 1
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                       out / "last.pt")
            log(f"epoch {epoch:3d}/{config.train.epochs}  train_loss {row['train_loss']:.4f}  "
                f"val_loss {val['loss']:.4f}  val_accuracy {val['accuracy']:.4f}{'  *' if improved else ''}")
            if config.train.patience and stale >= config.train.patience:
                log(f"early stop: no better val_accuracy for {stale} epochs")
                break

    model.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    test = evaluate(model, X[split.test], y[split.test], loss_fn)
    summary = {
        "name": config.name,
        "dataset": data.name,
        "dataset_description": data.description,
        "task": data.task,
        "split": split.describe(),
        "seed": config.seed,
        "best_epoch": best_epoch,
        "epochs_run": epoch,
        "metrics": {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": best},
        "library_versions": library_versions(),
        "train_seconds": round(time.perf_counter() - started, 3),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m training", *sys.argv[1:]]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"test_accuracy {test['accuracy']:.4f}  (best epoch {best_epoch}; run folder {out})")
    return summary


def load_trained(run_dir: Path) -> tuple[dict, dict, nn.Module]:
    """(config.json, summary.json, the best model in eval mode) of a finished run."""
    run_dir = Path(run_dir)
    try:
        resolved = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{run_dir} is not a finished run folder: {Path(exc.filename).name} is missing") from None
    zeros = torch.zeros(resolved["network"]["in_features"])
    model = build_network(resolved["arch"], resolved["network"], zeros, torch.ones_like(zeros))
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True))
    model.eval()
    return resolved, summary, model
