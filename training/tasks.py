"""Tasks: how targets are scaled for training, the loss, the served head, and the metrics, per task.

The trained `Network` works in standardized units. The served model is `Network` plus the task's head, so
clients send raw features and get answers in the data's units: class probabilities, the probability of the
positive class, values in the target's units, the next H values of a series, or a reconstruction with its
anomaly score and embedding. Metrics are computed on the served head's outputs, so the same function scores
the torch model and the exported ONNX model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TASKS = ("multiclass", "binary", "regression", "forecasting", "anomaly", "generation")


class Network(nn.Module):
    """Input standardization -> architecture, in standardized units; the statistics travel as buffers.

    For a series (`series=True`) the input is a raw window [B, T]; it is scaled relative to its last value,
    (x - x[:, -1]) / std, which keeps a trending series (co2) inside the range seen in training.
    """

    def __init__(self, body: nn.Module, x_mean: torch.Tensor, x_std: torch.Tensor,
                 y_mean: torch.Tensor | None = None, y_std: torch.Tensor | None = None, series: bool = False):
        super().__init__()
        self.body = body
        self.series = series
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32).clone())
        self.register_buffer("x_std", torch.as_tensor(x_std, dtype=torch.float32).clone())
        self.register_buffer("y_mean", torch.as_tensor(0.0 if y_mean is None else y_mean, dtype=torch.float32).clone())
        self.register_buffer("y_std", torch.as_tensor(1.0 if y_std is None else y_std, dtype=torch.float32).clone())

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        if self.series:
            return ((x - x[:, -1:]) / self.x_std).unsqueeze(-1)  # [B, T] -> [B, T, 1]
        return (x - self.x_mean) / self.x_std

    def forward(self, x: torch.Tensor):
        return self.body(self.scale(x))

    def scale_targets(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Targets in the units the body predicts (regression: standardized; series: relative to the last value)."""
        if self.series:
            return (y - x[:, -1:]) / self.x_std
        return (y - self.y_mean) / self.y_std

    def unscale_outputs(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.series:
            return out * self.x_std + x[:, -1:]
        return out * self.y_std + self.y_mean


class ServedModel(nn.Module):
    """The network with the task's output head: what is exported and served."""

    def __init__(self, network: Network, task: str):
        super().__init__()
        self.network = network
        self.task = task

    def forward(self, x: torch.Tensor):
        return self.head(self.network(x), x)

    def head(self, out, x: torch.Tensor):
        """The served outputs from the network's raw output `out` for input `x`."""
        if self.task == "multiclass":
            return torch.softmax(out, dim=-1)  # [B, K]
        if self.task == "binary":
            return torch.sigmoid(out.squeeze(-1))  # [B]
        if self.task == "regression":
            return self.network.unscale_outputs(out.squeeze(-1), x)  # [B]
        if self.task == "forecasting":
            return self.network.unscale_outputs(out, x)  # [B, H]
        if self.task == "anomaly":
            recon, embedding = out
            scaled = self.network.scale(x)
            score = (recon - scaled).pow(2).flatten(1).mean(1)  # [B] mean squared error, standardized units
            return recon * self.network.x_std + self.network.x_mean, score, embedding
        raise ValueError(f"task {self.task!r} has no served head; valid tasks are {list(TASKS)}")


@dataclass(frozen=True)
class TaskSpec:
    """Per-task facts: output names of the served model and whether the metric `monitor` default rises."""

    outputs: tuple[str, ...]
    metric: str  # the headline test metric
    higher_is_better: bool


TASK_SPECS = {
    "multiclass": TaskSpec(("probabilities",), "accuracy", True),
    "binary": TaskSpec(("probability",), "accuracy", True),
    "regression": TaskSpec(("prediction",), "r2", True),
    "forecasting": TaskSpec(("forecast",), "mae", False),
    "anomaly": TaskSpec(("reconstruction", "score", "embedding"), "roc_auc", True),
    "generation": TaskSpec(("image",), "judge_accuracy", True),
}
LOWER_IS_BETTER = ("loss", "mae", "rmse")


def higher_is_better(metric: str) -> bool:
    return not any(metric.endswith(suffix) for suffix in LOWER_IS_BETTER)


def loss_fn(task: str):
    """Training loss on the network's outputs and scaled targets."""
    if task == "multiclass":
        return nn.CrossEntropyLoss()
    if task == "binary":
        bce = nn.BCEWithLogitsLoss()
        return lambda out, y: bce(out.squeeze(-1), y.float())
    if task == "regression":
        return lambda out, y: F.mse_loss(out.squeeze(-1), y)
    if task == "forecasting":
        return nn.MSELoss()
    if task == "anomaly":
        return lambda out, target: F.mse_loss(out[0], target)
    raise ValueError(f"task {task!r} is not trained by this loop; valid tasks are {list(TASKS)}")


def training_target(task: str, network: Network, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """What the loss compares the network's output with."""
    if task in ("regression", "forecasting"):
        return network.scale_targets(y, x)
    if task == "anomaly":
        return network.scale(x)
    return y


def compute_metrics(task: str, outputs, y: np.ndarray | None) -> dict[str, float]:
    """Metrics from the served head's outputs (numpy, data units) and the raw targets."""
    from sklearn import metrics as skm

    if task == "multiclass":
        probs = np.asarray(outputs)
        return {"accuracy": float((probs.argmax(1) == y).mean())}
    if task == "binary":
        p = np.asarray(outputs)
        return {"accuracy": float(((p >= 0.5) == (y == 1)).mean()), "roc_auc": float(skm.roc_auc_score(y, p))}
    if task == "regression":
        pred = np.asarray(outputs, dtype=np.float64)
        return {"r2": float(skm.r2_score(y, pred)), "mae": float(np.abs(pred - y).mean()),
                "rmse": float(np.sqrt(((pred - y) ** 2).mean()))}
    if task == "forecasting":
        pred = np.asarray(outputs, dtype=np.float64)
        return {"mae": float(np.abs(pred - y).mean()), "rmse": float(np.sqrt(((pred - y) ** 2).mean()))}
    if task == "anomaly":
        score = np.asarray(outputs[1], dtype=np.float64)
        return {"reconstruction_mse": float(score.mean())}
    raise ValueError(f"no metrics for task {task!r}")
