"""Fully convolutional network for time series of any length and channels (Wang et al. 2017).

The FCN baseline of the time-series classification literature (Ismail Fawaz et al. 2019): blocks of
convolution → batch norm → ReLU with "same" padding and no pooling, then global average pooling over time,
so the head sees ``channels[-1]`` features whatever the series length. Unlike the reference ``cnn``, whose
flattened head grows with the length, it takes series of another length than it was trained on.
"""

from __future__ import annotations

import torch
from torch import nn

from sounding.errors import BadInput
from sounding.models.nets.base import Classifier, init_weights


class FCNBackbone(nn.Module):
    """Conv1d(k, "same") → BatchNorm1d → ReLU per block, then the mean over time (global average pooling)."""

    def __init__(self, in_channels: int, channels: list[int], kernels: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, k in zip([in_channels, *channels[:-1]], channels, kernels, strict=True):
            # No bias: the batch norm that follows has its own shift.
            layers += [
                nn.Conv1d(c_in, c_out, k, padding="same", bias=False),
                nn.BatchNorm1d(c_out),
                nn.ReLU(),
            ]
        self.blocks = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # [N, L]: one channel
            x = x.unsqueeze(1)
        return self.dropout(self.blocks(x).mean(-1))


class FCN(Classifier):
    """FCN over sequences [L] or [C, L]. The published FCN has channels 128/256/128 and kernels 8/5/3.

    >>> import torch; FCN((3, 50), 4, channels=(8, 16, 8))(torch.zeros(2, 3, 50)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        layout: str = "sequence",
        channels: tuple[int, ...] = (128, 256, 128),
        kernels: tuple[int, ...] = (8, 5, 3),
        dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        if layout != "sequence":
            raise BadInput(f"fcn: takes sequences [L] or [C, L], not layout {layout!r}; use cnn for images")
        if len(channels) != len(kernels):
            raise BadInput(
                f"fcn: models.fcn.channels {list(channels)} and kernels {list(kernels)} must have one entry "
                "per block each"
            )
        in_channels = input_shape[0] if len(input_shape) == 2 else 1
        self.backbone = FCNBackbone(in_channels, list(channels), list(kernels), dropout)
        self.head = nn.Linear(channels[-1], num_classes)
        init_weights(self, init)
