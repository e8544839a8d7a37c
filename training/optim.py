"""Optimizers and learning-rate schedules from their config tables."""

from __future__ import annotations

import torch

from training.config import OptimizerConfig, ScheduleConfig

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("none", "step", "cosine", "plateau")


def make_optimizer(cfg: OptimizerConfig, params) -> torch.optim.Optimizer:
    """The configured optimizer, with torch's fused kernel where it has one (sgd, adam, adamw).

    The fused kernel updates every parameter in one call instead of a Python loop of small ops per tensor, which
    is torch's default on CPU; the update is the same algorithm. bench.train_speed measured what it buys."""
    params = list(params)
    fusable = params and all(isinstance(p, torch.Tensor) and p.is_floating_point()
                             and p.device.type in ("cpu", "cuda") for p in params)
    fused = {"fused": True} if fusable else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "rmsprop":  # torch has no fused RMSprop
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}; valid optimizers are {list(OPTIMIZERS)}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state but keep this optimizer's kernel choice (`fused`, `foreach`).

    load_state_dict takes every setting of the saved param groups: a checkpoint from before the fused kernel
    would switch it off. The choice is set before loading, so that the state (Adam's step) is cast for it."""
    groups = [{**saved, **{key: optimizer.defaults[key] for key in ("fused", "foreach") if key in optimizer.defaults}}
              for saved in state["param_groups"]]
    optimizer.load_state_dict({**state, "param_groups": groups})


def make_schedule(cfg: ScheduleConfig, optimizer, epochs: int, maximize: bool):
    """The configured schedule (None for `none`); `maximize`: the monitored metric of `plateau` rises."""
    if cfg.name == "none":
        return None
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max" if maximize else "min",
                                                          factor=cfg.factor, patience=cfg.patience)
    raise ValueError(f"unknown schedule {cfg.name!r}; valid schedules are {list(SCHEDULES)}")
