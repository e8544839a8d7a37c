"""Convolutional classifier/regressor over small square images (digits 8x8, 16x16, MNIST-size 28x28)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from training.architectures.layers import make_activation


@dataclass
class CNNConfig:
    in_channels: int = 1
    image_size: int = 8
    out_features: int = 10
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 3])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = True
    pool: bool = True
    hidden_dim: int = 128


class CNN(nn.Module):
    """Conv -> [BatchNorm] -> activation -> [MaxPool 2x2] per block, then flatten -> Linear -> activation -> Linear."""

    def __init__(self, config: CNNConfig):
        super().__init__()
        if len(config.channels) != len(config.kernel_sizes):
            raise ValueError(f"channels {config.channels} and kernel_sizes {config.kernel_sizes} differ in length")
        if not config.channels:
            raise ValueError("channels must name at least one conv layer")
        layers: list[nn.Module] = []
        width, size = config.in_channels, config.image_size
        for channels, kernel in zip(config.channels, config.kernel_sizes):
            if kernel % 2 == 0:  # "same" for an even kernel: the extra row/column goes right/bottom, as torch does
                left = (kernel - 1) // 2
                layers.append(nn.ZeroPad2d((left, kernel - 1 - left, left, kernel - 1 - left)))
            layers.append(nn.Conv2d(width, channels, kernel, padding=kernel // 2 if kernel % 2 else 0))  # keeps H, W
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(channels))
            layers.append(make_activation(config.activation))
            if config.pool and size // 2 >= 2:  # pool only while the map stays at least 2x2
                layers.append(nn.MaxPool2d(2))
                size //= 2
            width = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * size * size, config.hidden_dim),
            make_activation(config.activation),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, config.out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # [B, C, H, W] -> [B, C', H', W']
        return self.head(h)  # [B, out_features]
