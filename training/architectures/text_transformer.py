"""Transformer encoder over word ids: embedding + positions -> encoder (padding masked) -> mean over the words."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.architectures.transformer import sinusoidal_encoding


@dataclass
class TextTransformerConfig:
    vocab_size: int = 1000  # ids, the special ones (PAD 0, UNK 1, CLS 2, the unknown-word classes) included
    out_features: int = 2
    d_model: int = 48
    nhead: int = 4
    num_layers: int = 2
    dim_feedforward: int = 96
    dropout: float = 0.1
    max_len: int = 65  # positions: the CLS id and up to 64 words


class TextTransformer(nn.Module):
    """ids [B, T] (0 = padding) -> logits [B, out_features]."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        if config.d_model % config.nhead:
            raise ValueError(f"model.d_model {config.d_model} is not divisible by model.nhead {config.nhead}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=0)
        self.register_buffer("pe", sinusoidal_encoding(config.max_len, config.d_model))
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(config.d_model, config.nhead, config.dim_feedforward, config.dropout,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.out_features)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        padding = ids == 0  # [B, T], True = padding; the CLS id keeps at least one step valid
        h = self.embed(ids) * self.config.d_model ** 0.5 + self.pe[:ids.size(1)]  # [B, T, C]
        h = self.encoder(self.dropout(h), src_key_padding_mask=padding)
        valid = (~padding).unsqueeze(-1).to(h.dtype)  # [B, T, 1]
        pooled = (h * valid).sum(dim=1) / valid.sum(dim=1)  # [B, C]
        return self.head(self.norm(pooled))


class ServedTextClassifier(nn.Module):
    """What is exported: ids [B, T] -> class probabilities [B, out_features]."""

    def __init__(self, body: TextTransformer):
        super().__init__()
        self.body = body

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(ids), dim=-1)
