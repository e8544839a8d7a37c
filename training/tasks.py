"""Tasks: one `Task` object per task, holding everything that differs between them.

The trained `Network` works in standardized units. The served model is `Network` plus the task's head, so
clients send raw features and get answers in the data's units: class probabilities, the probability of the
positive class, values in the target's units, the next H values of a series, or a reconstruction with its
anomaly score and embedding. Metrics are computed on the served head's outputs, so the same function scores
the torch model and the exported ONNX model. Each task also names its loss, its training targets, its output
tensors and their shapes, its classic baselines and its plots. This module is the one place that tells the tasks
apart by name: everything else asks the task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training import architectures, baselines, plots
from training.gan import evaluation_inputs, generation_metrics, within_class_distance
from training.network import Network, load_generator, series_scaling
from training.predict import batched, noisy_copy

LOWER_IS_BETTER = ("loss", "mae", "rmse", "bits_per_char")


def higher_is_better(metric: str) -> bool:
    return not any(metric.endswith(suffix) for suffix in LOWER_IS_BETTER)


class Task:
    """What one task means for training, scoring, export and the artifact. Subclasses override what differs."""

    name: str
    outputs: tuple[str, ...]  # output tensor names of the served model
    metric: str  # the headline test metric
    output_text: str  # what the served outputs are, for the artifact's preprocessing.output
    needs_labels = False  # the data must name its classes
    num_classes: int | None = None  # the number of classes the task takes (None: any)
    stratify = False  # split stratified by class
    forecasts = False  # a series: windows of past values in, the next values out
    scales_targets = False  # targets standardized with the training split's mean and std
    needs_judge = False  # scored by a classifier trained for it (training.trainer.train_judge)
    served_input = "raw values in the dataset's own units"
    in_graph_preprocessing = True  # the graph standardizes (or scales) its input itself

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

    def out_features(self, prepared) -> int | None:
        """The architecture's output width for this task (None: the architecture decides)."""
        return None

    def loss(self) -> Callable:
        """Training loss on the network's outputs and scaled targets."""
        raise ValueError(f"task {self.name!r} is not trained by this loop; valid tasks are {list(TASKS)}")

    def target(self, network: Network, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """What the loss compares the network's output with."""
        return y

    def head(self, network: Network, out, x: torch.Tensor):
        """The served outputs from the network's raw output `out` for input `x`."""
        raise ValueError(f"task {self.name!r} has no served head; valid tasks are {list(TASKS)}")

    def metrics(self, outputs, y: np.ndarray | None) -> dict[str, float]:
        """Metrics from the served head's outputs (numpy, data units) and the raw targets."""
        raise ValueError(f"no metrics for task {self.name!r}")

    def test_metrics(self, predict: Callable, prepared, config, judge: Callable | None = None) -> dict[str, float]:
        """Headline test metrics through `predict` (torch or ONNX Runtime: the same function scores both)."""
        return self.metrics(batched(predict, prepared.X["test"]), prepared.y["test"])

    def baselines(self, prepared, config) -> dict[str, float]:
        """Every classic baseline's headline test metric on the run's split (empty when none applies)."""
        return {}

    def plot(self, out: Path, prepared, outputs) -> list[Path]:
        """The task's own picture of the test split, from the served outputs."""
        return []

    def output_shapes(self, prepared, hyper: dict, in_shape: list[int]) -> list[list[int]]:
        """The served outputs' shapes (-1: dynamic), in the order of `outputs`."""
        return [[-1]]

    def task_params(self, prepared, summary, config) -> dict:
        """What a client needs beyond the tensors (the artifact's task_params)."""
        return {}

    def serve(self, network: nn.Module) -> nn.Module:
        """The module that is exported and served: the network with this task's head."""
        return ServedModel(network, self)

    def load_network(self, resolved, state: dict) -> nn.Module:
        """The trained network of a finished run from its resolved config and best.pt, in eval mode."""
        body = architectures.build(resolved.config.arch, resolved.network)
        network = Network(body, state["x_mean"], state["x_std"], state["y_mean"], state["y_std"],
                          series=resolved.series, scaling=series_scaling(resolved.config.data))
        network.load_state_dict(state)
        return network.eval()


def _confusion(out: Path, prepared, predicted: np.ndarray) -> list[Path]:
    return [plots.plot_confusion(out, prepared.y["test"], predicted, prepared.labels)]


class Multiclass(Task):
    name, outputs, metric = "multiclass", ("probabilities",), "accuracy"
    output_text = "softmax over the classes"
    needs_labels = stratify = True

    def out_features(self, prepared) -> int | None:
        return len(prepared.labels)

    def loss(self) -> Callable:
        return nn.CrossEntropyLoss()

    def head(self, network, out, x):
        return torch.softmax(out, dim=-1)  # [B, K]

    def metrics(self, outputs, y):
        return {"accuracy": float((np.asarray(outputs).argmax(1) == y).mean())}

    def baselines(self, prepared, config):
        return baselines.classifier_baselines(prepared, config)

    def plot(self, out, prepared, outputs):
        return _confusion(out, prepared, outputs.argmax(1))

    def output_shapes(self, prepared, hyper, in_shape):
        return [[-1, len(prepared.labels)]]


class Binary(Task):
    name, outputs, metric = "binary", ("probability",), "accuracy"
    output_text = "sigmoid: the probability of the positive class"
    needs_labels = stratify = True
    num_classes = 2

    def out_features(self, prepared) -> int | None:
        return 1

    def loss(self) -> Callable:
        bce = nn.BCEWithLogitsLoss()
        return lambda out, y: bce(out.squeeze(-1), y.float())

    def head(self, network, out, x):
        return torch.sigmoid(out.squeeze(-1))  # [B]

    def metrics(self, outputs, y):
        from sklearn import metrics as skm

        p = np.asarray(outputs)
        return {"accuracy": float(((p >= 0.5) == (y == 1)).mean()), "roc_auc": float(skm.roc_auc_score(y, p))}

    def baselines(self, prepared, config):
        return baselines.classifier_baselines(prepared, config)

    def plot(self, out, prepared, outputs):
        return _confusion(out, prepared, (outputs >= 0.5).astype(int))

    def task_params(self, prepared, summary, config):
        return {"positive_label": prepared.labels[1]}


def _errors(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"mae": float(np.abs(pred - y).mean()), "rmse": float(np.sqrt(((pred - y) ** 2).mean()))}


class Regression(Task):
    name, outputs, metric = "regression", ("prediction",), "r2"
    output_text = "the value in the target's units (inverse scaling in the graph)"
    scales_targets = True

    def out_features(self, prepared) -> int | None:
        return 1

    def loss(self) -> Callable:
        return lambda out, y: F.mse_loss(out.squeeze(-1), y)

    def target(self, network, x, y):
        return network.scale_targets(y, x)

    def head(self, network, out, x):
        return network.unscale_outputs(out.squeeze(-1), x)  # [B]

    def metrics(self, outputs, y):
        from sklearn import metrics as skm

        pred = np.asarray(outputs, dtype=np.float64)
        return {"r2": float(skm.r2_score(y, pred)), **_errors(pred, y)}

    def baselines(self, prepared, config):
        return baselines.regressor_baselines(prepared, config)


class Forecasting(Task):
    name, outputs, metric = "forecasting", ("forecast",), "mae"
    output_text = "the next values in the series' units (inverse scaling in the graph)"
    forecasts = True

    def out_features(self, prepared) -> int | None:
        return prepared.horizon

    def loss(self) -> Callable:
        return nn.MSELoss()

    def target(self, network, x, y):
        return network.scale_targets(y, x)

    def head(self, network, out, x):
        return network.unscale_outputs(out, x)  # [B, H]

    def metrics(self, outputs, y):
        return _errors(np.asarray(outputs, dtype=np.float64), y)

    def baselines(self, prepared, config):
        return baselines.forecast_baselines(prepared)

    def plot(self, out, prepared, outputs):
        return [plots.plot_forecast(out, prepared.X["test"], prepared.y["test"], outputs)]

    def output_shapes(self, prepared, hyper, in_shape):
        return [[-1, prepared.horizon]]

    def task_params(self, prepared, summary, config):
        return {"window": prepared.window, "horizon": prepared.horizon, "season": prepared.data.season}


class Anomaly(Task):
    name, outputs, metric = "anomaly", ("reconstruction", "score", "embedding"), "roc_auc"
    output_text = "reconstruction in the input's units, anomaly score, encoder embedding"

    def loss(self) -> Callable:
        return lambda out, target: F.mse_loss(out[0], target)

    def target(self, network, x, y):
        return network.scale(x)

    def head(self, network, out, x):
        recon, embedding = out
        scaled = network.scale(x)
        score = (recon - scaled).pow(2).flatten(1).mean(1)  # [B] mean squared error, standardized units
        return recon * network.x_std + network.x_mean, score, embedding

    def metrics(self, outputs, y):
        return {"reconstruction_mse": float(np.asarray(outputs[1], dtype=np.float64).mean())}

    def test_metrics(self, predict, prepared, config, judge=None):
        """Threshold from the training reconstruction errors; ROC AUC of clean test samples against noisy ones."""
        from sklearn.metrics import roc_auc_score

        metrics = super().test_metrics(predict, prepared, config)
        quantile = float(config.eval.get("quantile", 0.99))
        noise = float(config.eval.get("noise", 4.0))
        threshold = float(np.quantile(batched(predict, prepared.X["train"])[1], quantile))
        clean = batched(predict, prepared.X["test"])[1]
        noisy = batched(predict, noisy_copy(prepared.X["test"], noise, config.seed))[1]
        scores = np.concatenate([clean, noisy])
        truth = np.concatenate([np.zeros(len(clean)), np.ones(len(noisy))])
        return {**metrics, "roc_auc": float(roc_auc_score(truth, scores)), "threshold": threshold,
                "clean_flagged": float((clean > threshold).mean()), "noisy_flagged": float((noisy > threshold).mean())}

    def baselines(self, prepared, config):
        return baselines.anomaly_baselines(prepared, config)

    def plot(self, out, prepared, outputs):
        if prepared.data.kind != "image":
            return []
        shape = prepared.data.X.shape[-2:]
        X = prepared.X["test"]
        return [plots.image_grid(out / "plots" / "reconstructions.png",
                                 [X[:10].reshape(-1, *shape), outputs[0][:10].reshape(-1, *shape)],
                                 ["original", "reconstruction"], "test samples and their reconstructions")]

    def output_shapes(self, prepared, hyper, in_shape):
        return [in_shape, [-1], [-1, hyper["latent_dim"]]]

    def task_params(self, prepared, summary, config):
        return {"threshold": summary.metrics["test_threshold"], "quantile": config.eval.get("quantile", 0.99),
                "score": "mean squared reconstruction error of the standardized input", "score_output": "score"}


class Generation(Task):
    name, outputs, metric = "generation", ("image",), "judge_accuracy"
    output_text = "image in [0, 1]"
    needs_labels = needs_judge = True
    served_input = "a standard-normal latent vector and a class index"
    in_graph_preprocessing = False

    def out_features(self, prepared) -> int | None:
        return len(prepared.labels)

    def test_metrics(self, predict, prepared, config, judge=None):
        """Judge accuracy and diversity of `predict`'s images for fixed latents of every class (training.gan)."""
        pixel_max = float(prepared.data.X.max())
        reference = within_class_distance(prepared.X["train"] / pixel_max, prepared.y["train"])
        hyper = architectures.resolve_hyper(config.arch, config.model, list(prepared.X["train"].shape[1:]),
                                            len(prepared.labels))
        inputs = evaluation_inputs(hyper["num_classes"], hyper["latent_dim"],
                                   int(config.eval.get("samples_per_class", 100)), config.seed)
        return generation_metrics(predict, judge, *inputs, pixel_max, reference)

    def output_shapes(self, prepared, hyper, in_shape):
        return [[-1, hyper["channels"], hyper["image_size"], hyper["image_size"]]]

    def serve(self, network):
        return network  # the served generator already maps its images to [0, 1]

    def load_network(self, resolved, state):
        return load_generator(resolved.network, state)


TASKS: dict[str, Task] = {t.name: t for t in (Multiclass(), Binary(), Regression(), Forecasting(), Anomaly(),
                                              Generation())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks are {list(TASKS)}") from None


class ServedModel(nn.Module):
    """The network with the task's output head: what is exported and served."""

    def __init__(self, network: Network, task: str | Task):
        super().__init__()
        self.network = network
        self.task = get_task(task) if isinstance(task, str) else task

    def forward(self, x: torch.Tensor):
        return self.head(self.network(x), x)

    def head(self, out, x: torch.Tensor):
        """The served outputs from the network's raw output `out` for input `x`."""
        return self.task.head(self.network, out, x)
