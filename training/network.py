"""The trained modules around an architecture: input standardization (`Network`) and the served GAN generator."""

from __future__ import annotations

import torch
from torch import nn

from training.architectures.gan import GANConfig, Generator


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


class ServedGenerator(nn.Module):
    """Latent [B, Z] and class [B] (int64) -> image [B, C, H, W] in [0, 1]."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return (self.generator(latent, label) + 1) / 2


def load_generator(hyper: dict, state: dict) -> ServedGenerator:
    """The served generator of a GAN run from its hyperparameters and best.pt."""
    generator = Generator(GANConfig(**hyper))
    generator.load_state_dict(state)
    return ServedGenerator(generator).eval()
