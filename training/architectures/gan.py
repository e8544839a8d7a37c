"""Conditional DCGAN for small grayscale images: a class-conditioned generator and a projection discriminator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.architectures.layers import make_activation


@dataclass
class GANConfig:
    latent_dim: int = 32
    num_classes: int = 10
    image_size: int = 8
    channels: int = 1
    base_channels: int = 64
    embed_dim: int = 16
    activation: str = "leaky_relu"  # the discriminator's; the generator uses ReLU (DCGAN)
    dropout: float = 0.0


def _check_size(config: GANConfig) -> int:
    if config.image_size < 4 or config.image_size % 4:
        raise ValueError(f"image_size {config.image_size} must be a positive multiple of 4")
    return config.image_size // 4


class Generator(nn.Module):
    """[z, embed(label)] -> Linear -> 2 x (ConvTranspose 4/2/1 -> BatchNorm -> ReLU) -> Conv -> tanh."""

    def __init__(self, config: GANConfig):
        super().__init__()
        size = _check_size(config)
        wide, narrow = config.base_channels * 2, config.base_channels
        self.embed = nn.Embedding(config.num_classes, config.embed_dim)
        self.project = nn.Sequential(
            nn.Linear(config.latent_dim + config.embed_dim, wide * size * size),
            nn.Unflatten(1, (wide, size, size)),
            nn.BatchNorm2d(wide),
            make_activation("relu"),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(wide, narrow, 4, stride=2, padding=1),  # size -> 2 * size
            nn.BatchNorm2d(narrow),
            make_activation("relu"),
            nn.ConvTranspose2d(narrow, narrow, 4, stride=2, padding=1),  # 2 * size -> image_size
            nn.BatchNorm2d(narrow),
            make_activation("relu"),
            nn.Conv2d(narrow, config.channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(labels)], dim=1)  # [B, Z + E]
        return self.net(self.project(h))  # [B, C, H, W] in [-1, 1]


class Discriminator(nn.Module):
    """2 x (strided Conv -> LeakyReLU(0.2) -> [Dropout]) -> flatten; logit = Linear(h) + <embed(label), W h>."""

    def __init__(self, config: GANConfig):
        super().__init__()
        size = _check_size(config)
        wide, narrow = config.base_channels * 2, config.base_channels
        layers: list[nn.Module] = []
        for width_in, width_out in ((config.channels, narrow), (narrow, wide)):
            layers.append(nn.Conv2d(width_in, width_out, 4, stride=2, padding=1))  # halves H, W
            activation = make_activation(config.activation)
            if isinstance(activation, nn.LeakyReLU):
                activation.negative_slope = 0.2  # DCGAN's slope; make_activation gives torch's default 0.01
            layers.append(activation)
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        flat = wide * size * size
        self.embed = nn.Embedding(config.num_classes, config.embed_dim)
        self.project = nn.Linear(flat, config.embed_dim, bias=False)
        self.head = nn.Linear(flat, 1)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images)  # [B, C, H, W] -> [B, F]
        match = (self.embed(labels) * self.project(h)).sum(dim=1, keepdim=True)  # [B, 1] class projection
        return (self.head(h) + match).squeeze(1)  # [B] logits
