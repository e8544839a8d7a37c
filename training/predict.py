"""Prediction helpers: numpy in, numpy out, through a torch module, in chunks; and the noisy copies anomalies are."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

EVAL_BATCH = 1024


def batched(fn: Callable, X: np.ndarray):
    """Apply `fn` to X in chunks and concatenate the outputs (tuples element-wise)."""
    outs = [fn(X[i:i + EVAL_BATCH]) for i in range(0, len(X), EVAL_BATCH)]
    if isinstance(outs[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*outs))
    return np.concatenate(outs)


def torch_predictor(model: nn.Module) -> Callable[[np.ndarray], np.ndarray | tuple]:
    """numpy in, numpy out, through a torch module in eval mode without gradients."""

    def predict(X: np.ndarray):
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(X)))
        return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()

    return predict


def noisy_copy(X: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """The same samples with heavy Gaussian noise, clipped to the data's range (the anomalies to find)."""
    rng = np.random.default_rng(seed)
    return np.clip(X + rng.normal(0, noise, X.shape), X.min(), X.max()).astype(np.float32)
