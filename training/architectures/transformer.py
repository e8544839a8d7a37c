"""Transformer encoder over a feature sequence, pooled to one output vector per sequence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.architectures.layers import make_activation

ENCODER_ACTIVATIONS = ("gelu", "relu")  # the ones nn.TransformerEncoderLayer takes by name
POOLINGS = ("last", "mean")


@dataclass
class TransformerConfig:
    input_size: int = 8
    out_features: int = 10
    d_model: int = 64
    nhead: int = 4
    num_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.1
    activation: str = "relu"
    max_len: int = 512
    pooling: str = "mean"


def sinusoidal_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """[max_len, d_model] sine/cosine positional encoding (Vaswani et al.)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
    return pe


class TransformerNet(nn.Module):
    """Linear projection + positional encoding -> TransformerEncoder -> mean/last pooling -> LayerNorm -> Linear."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        make_activation(config.activation)  # rejects unknown names with the full list
        if config.activation not in ENCODER_ACTIVATIONS:
            raise ValueError(f"activation {config.activation!r} is not supported by the transformer encoder; "
                             f"valid activations are {list(ENCODER_ACTIVATIONS)}")
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {config.pooling!r}; valid poolings are {list(POOLINGS)}")
        if config.d_model % config.nhead:
            raise ValueError(f"d_model {config.d_model} is not divisible by nhead {config.nhead}")
        self.pooling = config.pooling
        self.input_proj = nn.Linear(config.input_size, config.d_model)
        self.register_buffer("pe", sinusoidal_encoding(config.max_len, config.d_model))
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=config.d_model,
            nhead=config.nhead,
            dim_feedforward=config.dim_feedforward,
            dropout=config.dropout,
            activation=config.activation,
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.out_features)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        steps = x.size(1)
        h = self.input_proj(x) + self.pe[:steps]  # [B, T, F] -> [B, T, d_model]
        h = self.encoder(self.dropout(h), src_key_padding_mask=padding_mask)  # mask [B, T], True = padding
        if padding_mask is None:
            pooled = h.mean(dim=1) if self.pooling == "mean" else h[:, -1]  # [B, d_model]
        else:
            valid = (~padding_mask).unsqueeze(-1).to(h.dtype)  # [B, T, 1]
            count = valid.sum(dim=1)  # [B, 1]
            if self.pooling == "mean":
                pooled = (h * valid).sum(dim=1) / count.clamp(min=1.0)
            else:  # the last valid step; padding is assumed to be a tail
                index = (count.to(torch.int64) - 1).clamp(min=0).unsqueeze(-1).expand(-1, 1, h.size(-1))
                pooled = h.gather(1, index).squeeze(1)
        return self.head(self.norm(pooled))  # [B, out_features]
