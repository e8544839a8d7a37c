"""Feed-forward network (multilayer perceptron) over a flat feature vector."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from training.architectures.layers import make_activation


@dataclass
class MLPConfig:
    in_features: int = 64
    out_features: int = 10
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> [Dropout] per hidden layer, then a linear output (logits)."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = config.in_features
        for hidden in config.hidden_dims:
            layers.append(nn.Linear(width, hidden))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(make_activation(config.activation))
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, config.out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, F] -> [B, out_features]
