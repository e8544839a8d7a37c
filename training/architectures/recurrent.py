"""Recurrent sequence model (Elman RNN, LSTM or GRU) reading the output at each sample's last valid step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.architectures.layers import make_activation

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
RNN_ACTIVATIONS = ("relu", "tanh")  # the nonlinearities nn.RNN supports
BIDIRECTIONAL = ("model.bidirectional: a bidirectional network reads future steps and cannot run one step at a time; "
                 "expected false")


@dataclass
class RecurrentConfig:
    cell: str = "lstm"
    input_size: int = 1
    out_features: int = 1
    hidden_dim: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    activation: str = "tanh"  # the Elman RNN's nonlinearity; LSTM and GRU have fixed gates and need "tanh"


class RecurrentNet(nn.Module):
    """RNN/LSTM/GRU (batch_first) -> output at the last valid step -> Dropout -> Linear."""

    def __init__(self, config: RecurrentConfig):
        super().__init__()
        if config.cell not in CELLS:
            raise ValueError(f"unknown cell {config.cell!r}; valid cells are {sorted(CELLS)}")
        make_activation(config.activation)  # rejects unknown names with the full list
        kwargs = {}
        if config.cell == "rnn":
            if config.activation not in RNN_ACTIVATIONS:
                raise ValueError(f"activation {config.activation!r} is not supported by cell 'rnn'; "
                                 f"valid activations are {list(RNN_ACTIVATIONS)}")
            kwargs["nonlinearity"] = config.activation
        elif config.activation != "tanh":
            raise ValueError(f"cell {config.cell!r} has fixed activations; valid activations are ['tanh']")
        self.cell = config.cell
        self.hidden_dim = config.hidden_dim
        self.bidirectional = config.bidirectional
        self.rnn = CELLS[config.cell](
            input_size=config.input_size,
            hidden_size=config.hidden_dim,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            **kwargs,
        )
        directions = 2 if config.bidirectional else 1
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(directions * config.hidden_dim, config.out_features)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.rnn(x)  # [B, T, F] -> [B, T, D*H]
        fwd = out[..., : self.hidden_dim]  # [B, T, H]
        if lengths is None:
            last = fwd[:, -1]  # [B, H]
        else:
            index = (lengths.to(torch.int64) - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, self.hidden_dim)
            last = fwd.gather(1, index).squeeze(1)  # [B, H] at step lengths - 1
        if self.bidirectional:
            last = torch.cat([last, out[:, 0, self.hidden_dim:]], dim=-1)  # backward direction ends at step 0
        return self.head(self.dropout(last))  # [B, out_features]

    def step(self, x: torch.Tensor, state):
        """Continue sequences from `state` with their next steps x [B, S, F]: (the output at the last of them
        [B, out_features], the new state). The state is the cell's own: h [L, B, H], and (h, c) for an LSTM.
        A bidirectional network reads every step backwards from the end, so it cannot continue a sequence."""
        if self.bidirectional:
            raise ValueError(BIDIRECTIONAL)
        out, state = self.rnn(x, state)  # [B, S, F] -> [B, S, H]
        return self.head(self.dropout(out[:, -1])), state  # [B, out_features]
