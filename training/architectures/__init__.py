"""The registry of architectures: name -> spec (config class, module class, export settings)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from training.architectures.layers import Standardize
from training.architectures.mlp import MLP, MLPConfig


@dataclass(frozen=True)
class ArchSpec:
    """What the trainer and the exporter need to know about one architecture."""

    config_cls: type
    module_cls: type
    tasks: tuple[str, ...]
    dynamo: bool = True  # the legacy TorchScript exporter where dynamo cannot keep dims dynamic (Elman RNN)
    atol: float = 1e-5  # export parity tolerance


ARCHITECTURES: dict[str, ArchSpec] = {
    "mlp": ArchSpec(MLPConfig, MLP, tasks=("multiclass", "binary", "regression")),
}


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid architectures are {sorted(ARCHITECTURES)}") from None


def build_network(arch: str, hyper: dict[str, Any], mean, std) -> nn.Module:
    """Preprocessing followed by the architecture's network; `hyper` fills its *Config dataclass."""
    spec = get_arch(arch)
    valid = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(hyper) - valid)
    if unknown:
        raise ValueError(f"model: unknown key(s) {unknown} for architecture {arch!r}; valid keys are {sorted(valid)}")
    return nn.Sequential(Standardize(mean, std), spec.module_cls(spec.config_cls(**hyper)))
