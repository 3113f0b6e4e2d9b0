"""Convolutional network: Conv1d over sequences, Conv2d over images, chosen from the data layout."""

from __future__ import annotations

import torch
from torch import nn

from sounding.errors import BadInput
from sounding.models.nets.base import Classifier, flat_size, init_weights


class ConvBackbone(nn.Module):
    """Conv → ReLU per kernel (stride ``stride``, padding 1 as in the reference), then flatten."""

    def __init__(
        self, dims: int, in_channels: int, channels: int, kernels: list[int], stride: int, dropout: float
    ):
        super().__init__()
        self.dims = dims
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        layers: list[nn.Module] = []
        for i, k in enumerate(kernels):
            layers += [
                conv(in_channels if i == 0 else channels, channels, k, stride=stride, padding=1),
                nn.ReLU(),
            ]
        self.convs = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, L] and [N, H, W] get a channel axis; [N, C, L] already has one.
        if x.ndim == self.dims + 1:
            x = x.unsqueeze(1)
        return self.convs(x)


class CNN(Classifier):
    """Defaults give the reference MNIST-1D CNN: 3 × Conv1d(25, k=5/3/3, stride 2) + linear (5,210 params).

    ``layout="image"`` inputs [H, W] use Conv2d with the same channels, kernels and stride.

    >>> import torch; CNN((8, 8), 10, layout="image")(torch.zeros(2, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        layout: str = "sequence",
        channels: int = 25,
        kernels: tuple[int, ...] = (5, 3, 3),
        stride: int = 2,
        dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        dims = 2 if layout == "image" else 1
        in_channels = input_shape[0] if len(input_shape) == dims + 1 else 1
        self.backbone = ConvBackbone(dims, in_channels, channels, list(kernels), stride, dropout)
        try:
            features = flat_size(self.backbone, input_shape)
        except RuntimeError as exc:
            raise BadInput(
                f"cnn: kernels {list(kernels)} with stride {stride} do not fit inputs of shape {input_shape} "
                f"({exc}); use fewer or smaller kernels (models.cnn.kernels) or a smaller stride"
            ) from None
        self.head = nn.Linear(features, num_classes)
        init_weights(self, init)
