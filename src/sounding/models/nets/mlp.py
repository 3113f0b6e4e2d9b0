"""Feed-forward network with optional residual connections, dropout and an init strategy."""

from __future__ import annotations

import math

import torch
from torch import nn

from sounding.models.nets.base import Classifier, init_weights


def hidden_layers(depth: int) -> int:
    """Hidden layers of an MLP of ``depth`` linear layers: the ones a residual connection goes round (the
    input layer and the head have none)."""
    return max(0, depth - 2)


class MLPBackbone(nn.Module):
    """Flatten → Linear(in, hidden) → ReLU, then ``hidden_layers(depth)`` layers ``h ← [h +] relu(W h)``."""

    def __init__(self, in_features: int, hidden: int, depth: int, residual: bool, dropout: float) -> None:
        super().__init__()
        self.residual = residual
        self.input = nn.Linear(in_features, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(hidden_layers(depth)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(torch.relu(self.input(x.flatten(1))))
        for layer in self.hidden:
            out = self.dropout(torch.relu(layer(h)))
            h = h + out if self.residual else out
        return h


class MLP(Classifier):
    """Defaults give the reference MNIST-1D MLP, 40→100→100→10 with one residual layer (15,210 params).

    >>> import torch; MLP((40,), 10, depth=32)(torch.zeros(2, 40)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: int = 100,
        depth: int = 3,
        residual: bool = True,
        dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        self.backbone = MLPBackbone(math.prod(input_shape), hidden, depth, residual, dropout)
        self.head = nn.Linear(hidden, num_classes)
        init_weights(self, init)
