"""Logistic regression on the flattened input: the published 32% baseline on MNIST-1D."""

from __future__ import annotations

import math

from torch import nn

from sounding.models.nets.base import Classifier


class Linear(Classifier):
    """Flatten → Linear(in, classes).

    >>> import torch; Linear((40,), 10)(torch.zeros(2, 40)).shape
    torch.Size([2, 10])
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.backbone = nn.Flatten()
        self.head = nn.Linear(math.prod(input_shape), num_classes)
