"""Recurrent network (GRU or LSTM) over the time axis; all time steps' outputs feed a linear head."""

from __future__ import annotations

import torch
from torch import nn

from sounding.models.nets.base import Classifier, init_weights


def time_major(input_shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    """(steps, features) for one sample.

    Sequences [L] are L steps of 1 feature, [C, L] are L steps of C features; images [H, W] are read
    row by row: H steps of W features.
    """
    if layout == "image" or len(input_shape) == 1:
        return (input_shape[0], input_shape[1]) if len(input_shape) == 2 else (input_shape[0], 1)
    channels, length = input_shape
    return length, channels


class RecurrentBackbone(nn.Module):
    def __init__(
        self,
        layout: str,
        cell: str,
        features: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.layout = layout
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(
            features,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # [N, L] → [N, L, 1]
            x = x.unsqueeze(-1)
        elif self.layout == "sequence":  # [N, C, L] → [N, L, C]
            x = x.transpose(1, 2)
        out, _ = self.rnn(x)
        return self.dropout(out.flatten(1))


class RNN(Classifier):
    """Defaults give the reference MNIST-1D GRU: bidirectional, hidden 6, 40 steps → linear (5,134 params).

    >>> import torch; RNN((40,), 10, cell="lstm", layers=2)(torch.zeros(2, 40)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        layout: str = "sequence",
        cell: str = "gru",
        hidden: int = 6,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        steps, features = time_major(input_shape, layout)
        self.backbone = RecurrentBackbone(layout, cell, features, hidden, layers, bidirectional, dropout)
        self.head = nn.Linear(steps * hidden * (2 if bidirectional else 1), num_classes)
        init_weights(self, init)
