"""Transformer encoder over characters: each character's embedding plus the embeddings of the hashed character
n-grams that end there (fastText style) -> blocks of `block` characters projected to one step each (a strided
convolution, like a vision Transformer's patches) plus positions -> encoder (padding masked) -> mean over the
valid steps, plus the mean of the character + n-gram embeddings (fastText's bag of n-grams) -> linear head.

The n-gram ids are computed from the character ids inside the module with integer arithmetic, so the exported
graph hashes exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.architectures.transformer import sinusoidal_encoding

HASH_BASE = 1009  # a prime above any character id (checked): distinct n-grams of one order give distinct numbers


@dataclass
class TextTransformerConfig:
    vocab_size: int = 300  # character ids, the special ones (PAD 0, UNK 1, CLS 2) included
    out_features: int = 2
    d_model: int = 48
    nhead: int = 4
    num_layers: int = 1
    dim_feedforward: int = 96
    dropout: float = 0.1
    max_len: int = 257  # characters: the CLS id and up to 256 characters
    block: int = 4  # characters per encoder step
    ngram_max: int = 4  # hashed n-grams of 2 .. ngram_max characters end at each position (1: none)
    ngram_buckets: int = 4093  # rows of the shared n-gram table (a prime); row 0 is the padding
    ngram_dim: int = 0  # width of the n-gram table, projected to d_model (0: d_model, no projection)


def ngram_ids(ids: torch.Tensor, n: int, buckets: int) -> torch.Tensor:
    """[B, T] character ids -> [B, T] bucket of the n characters ending at each position, 0 where any of them is
    padding or before the start (the CLS id counts as a character: it marks the start of the text)."""
    length = ids.size(1)
    value = torch.zeros_like(ids)
    valid = torch.ones_like(ids, dtype=torch.bool)
    for back in range(n - 1, -1, -1):  # the oldest character first
        shifted = nn.functional.pad(ids, (back, 0))[:, :length]  # shifted[:, t] = ids[:, t - back], 0 before 0
        value = value * HASH_BASE + shifted
        valid = valid & (shifted != 0)
    # every value < HASH_BASE ** 5 < 2 ** 50: no overflow; + n keeps the orders apart in the shared table
    return torch.where(valid, (value * n + n) % (buckets - 1) + 1, torch.zeros_like(ids))


class TextTransformer(nn.Module):
    """ids [B, T] (0 = padding) -> logits [B, out_features]."""

    def __init__(self, config: TextTransformerConfig):
        super().__init__()
        if config.d_model % config.nhead:
            raise ValueError(f"model.d_model {config.d_model} is not divisible by model.nhead {config.nhead}")
        if config.vocab_size > HASH_BASE or config.ngram_max > 5:
            raise ValueError(f"at most {HASH_BASE} character ids and n-grams of at most 5 characters (int64 hashes)")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=0)
        width = config.ngram_dim or config.d_model
        self.ngrams = nn.Embedding(config.ngram_buckets, width, padding_idx=0)
        self.ngram_proj = nn.Linear(width, config.d_model, bias=False) if config.ngram_dim else nn.Identity()
        for table in (self.embed, self.ngrams):
            nn.init.normal_(table.weight, std=table.weight.size(1) ** -0.5)
            table.weight.data[0] = 0
        self.patch = nn.Conv1d(config.d_model, config.d_model, config.block, stride=config.block)
        steps = -(-config.max_len // config.block)
        self.register_buffer("pe", sinusoidal_encoding(steps, config.d_model))
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(config.d_model, config.nhead, config.dim_feedforward, config.dropout,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.out_features)

    def embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T, C]: each character's embedding plus those of the n-grams ending there; padding embeds to zeros."""
        grams = sum(self.ngrams(ngram_ids(ids, n, self.config.ngram_buckets))
                    for n in range(2, self.config.ngram_max + 1))
        return self.embed(ids) + self.ngram_proj(grams)

    def features(self, chars: torch.Tensor) -> torch.Tensor:
        """[B, S, C], S = ceil(T / block): the embeddings of each block of characters, projected, plus positions.
        Padding is zeros, so a block's value does not depend on the padding after it."""
        h = nn.functional.pad(chars.transpose(1, 2), (0, self.config.block - 1))  # [B, C, T + block - 1]
        h = self.patch(h).transpose(1, 2)  # [B, S, C]
        return h + self.pe[:h.size(1)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != 0).sum(dim=1, keepdim=True)  # [B, 1]: the CLS id and the characters, padding after
        chars = self.embeddings(ids)
        h = self.features(chars)
        steps = torch.arange(h.size(1), device=ids.device).unsqueeze(0) * self.config.block  # first character
        padding = steps >= lengths  # [B, S], True = a block of padding only; the CLS block is always valid
        h = self.encoder(self.dropout(h), src_key_padding_mask=padding)
        valid = (~padding).unsqueeze(-1).to(h.dtype)  # [B, S, 1]
        pooled = (h * valid).sum(dim=1) / valid.sum(dim=1)  # [B, C]
        pooled = pooled + chars.sum(dim=1) / lengths.to(h.dtype)  # plus fastText's bag: the mean embedding
        return self.head(self.norm(pooled))


class ServedTextClassifier(nn.Module):
    """What is exported: ids [B, T] -> class probabilities [B, out_features]."""

    def __init__(self, body: TextTransformer):
        super().__init__()
        self.body = body

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(ids), dim=-1)
