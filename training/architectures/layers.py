"""Building blocks shared by the architectures: activations by name, in-graph preprocessing and output heads."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid activations are {sorted(ACTIVATIONS)}") from None


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics, stored as buffers so they travel in the graph."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone().float())
        self.register_buffer("std", std.clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class OutputHead(nn.Module):
    """The served model: the trained network followed by the task's output activation."""

    def __init__(self, network: nn.Module, task: str):
        super().__init__()
        self.network = network
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        if self.task == "multiclass":
            return torch.softmax(out, dim=-1)
        if self.task == "binary":
            return torch.sigmoid(out)
        return out
