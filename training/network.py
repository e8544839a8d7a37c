"""The trained modules around an architecture: input standardization (`Network`) and the served GAN generator."""

from __future__ import annotations

import torch
from torch import nn

from training.architectures.gan import GANConfig, Generator

SCALINGS = ("last", "diff")  # data.scaling of a series; the first is the default


def series_scaling(data: dict) -> str:
    """A series config's `data.scaling`: "last" (relative to the window's last value) or "diff" (causal)."""
    scaling = data.get("scaling", SCALINGS[0])
    if scaling not in SCALINGS:
        raise ValueError(f"data.scaling: expected one of {list(SCALINGS)}, got {scaling!r}")
    return scaling


class Network(nn.Module):
    """Input standardization -> architecture, in standardized units; the statistics travel as buffers.

    For a series (`series=True`) the input is a raw window [B, T], scaled by the std of the training steps in one of
    two ways (`scaling`), both of which keep a trending series (co2) inside the range seen in training:
    - "last": relative to the window's last value, (x - x[:, -1]) / std. Every step depends on the last one, so
      the window cannot be read one step at a time.
    - "diff": first differences, (x[t] - x[t-1]) / std, 0 at the first step. Causal: a step needs only its
      predecessor, so a recurrent network can stream (training.stream).
    Either way the body predicts the targets relative to the last value, which is added back at the output.
    """

    def __init__(self, body: nn.Module, x_mean: torch.Tensor, x_std: torch.Tensor,
                 y_mean: torch.Tensor | None = None, y_std: torch.Tensor | None = None, series: bool = False,
                 scaling: str = SCALINGS[0]):
        super().__init__()
        self.body = body
        self.series = series
        self.scaling = scaling
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32).clone())
        self.register_buffer("x_std", torch.as_tensor(x_std, dtype=torch.float32).clone())
        self.register_buffer("y_mean", torch.as_tensor(0.0 if y_mean is None else y_mean, dtype=torch.float32).clone())
        self.register_buffer("y_std", torch.as_tensor(1.0 if y_std is None else y_std, dtype=torch.float32).clone())

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        if self.series and self.scaling == "diff":
            previous = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # [B, T]: x[t - 1], and x[0] itself at t = 0
            return ((x - previous) / self.x_std).unsqueeze(-1)  # [B, T] -> [B, T, 1]
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
