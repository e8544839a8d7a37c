"""Autoencoders: dense over a flat feature vector, or convolutional over small square images.

Both squeeze the input through a linear latent code of `latent_dim` and return a linear reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from training.architectures.layers import make_activation

KINDS = ("conv", "dense")


@dataclass
class AutoencoderConfig:
    kind: str = "dense"
    in_features: int = 64  # dense only
    in_channels: int = 1  # conv only
    image_size: int = 8  # conv only
    hidden_dims: list[int] = field(default_factory=lambda: [128, 64])  # dense only
    latent_dim: int = 16
    channels: list[int] = field(default_factory=lambda: [16, 32])  # conv only
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False


def _dense_block(width: int, hidden: int, config: AutoencoderConfig) -> list[nn.Module]:
    return [nn.Linear(width, hidden), *_tail(nn.BatchNorm1d, hidden, config)]


def _conv_tail(channels: int, config: AutoencoderConfig) -> list[nn.Module]:
    return _tail(nn.BatchNorm2d, channels, config)


def _tail(norm: type[nn.Module], features: int, config: AutoencoderConfig) -> list[nn.Module]:
    """Optional batch norm, the activation, optional dropout: what follows each layer."""
    layers: list[nn.Module] = [norm(features)] if config.batch_norm else []
    layers.append(make_activation(config.activation))
    if config.dropout > 0:
        layers.append(nn.Dropout(config.dropout))
    return layers


class Autoencoder(nn.Module):
    """Encoder to a linear latent code z and a mirrored decoder back to the input's shape."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if config.kind not in KINDS:
            raise ValueError(f"unknown kind {config.kind!r}; valid kinds are {list(KINDS)}")
        make_activation(config.activation)  # rejects unknown names even with no hidden layer
        if config.kind == "dense":
            self.encoder, self.decoder = self._dense(config)
        else:
            self.encoder, self.decoder = self._conv(config)

    @staticmethod
    def _dense(config: AutoencoderConfig) -> tuple[nn.Sequential, nn.Sequential]:
        down: list[nn.Module] = []
        width = config.in_features
        for hidden in config.hidden_dims:
            down += _dense_block(width, hidden, config)
            width = hidden
        down.append(nn.Linear(width, config.latent_dim))
        up: list[nn.Module] = []
        width = config.latent_dim
        for hidden in reversed(config.hidden_dims):
            up += _dense_block(width, hidden, config)
            width = hidden
        up.append(nn.Linear(width, config.in_features))
        return nn.Sequential(*down), nn.Sequential(*up)

    @staticmethod
    def _conv(config: AutoencoderConfig) -> tuple[nn.Sequential, nn.Sequential]:
        if not config.channels:
            raise ValueError("channels must name at least one conv layer for kind 'conv'")
        sizes = [config.image_size]  # spatial size before each stride-2 conv, then the bottleneck's
        for _ in config.channels:
            sizes.append((sizes[-1] - 1) // 2 + 1)  # Conv2d(k=3, s=2, p=1)
        widths = [config.in_channels, *config.channels]
        down: list[nn.Module] = []
        for i in range(len(config.channels)):
            down.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
            down += _conv_tail(widths[i + 1], config)
        flat = widths[-1] * sizes[-1] * sizes[-1]
        down += [nn.Flatten(), nn.Linear(flat, config.latent_dim)]
        up: list[nn.Module] = [
            nn.Linear(config.latent_dim, flat),
            make_activation(config.activation),
            nn.Unflatten(1, (widths[-1], sizes[-1], sizes[-1])),
        ]
        for i in reversed(range(len(config.channels))):
            extra = sizes[i] - (2 * sizes[i + 1] - 1)  # output_padding that lands exactly on the encoder's size
            up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 3, stride=2, padding=1, output_padding=extra))
            if i > 0:  # the last layer is the linear reconstruction
                up += _conv_tail(widths[i], config)
        return nn.Sequential(*down), nn.Sequential(*up)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # [B, F] or [B, C, H, W] -> [B, Z]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # [B, Z] -> [B, F] or [B, C, H, W]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z  # reconstruction shaped like x, z [B, Z]
