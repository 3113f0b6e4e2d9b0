"""What every classifier network shares: backbone → head, and weight-initialisation strategies."""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("default", "xavier", "kaiming", "orthogonal")


STANDARDIZE = ("none", "channel", "series")


class Standardize(nn.Module):
    """Raw inputs → the scale the network learns on; part of the network, so every user of a saved model
    (``sounding predict``, the registered MLflow model, ``mlflow models serve``) feeds it raw values.

    ``channel``: subtract each channel's mean and divide by its standard deviation, both measured on the
    training part (``fit``) and saved with the weights (buffers ``mean``, ``std``); a constant channel is
    only centred. ``series``: z-normalise every series over its own time axis, per channel (the UCR/UEA
    archive's convention); nothing to fit. ``none``: inputs pass unchanged (the published MNIST-1D setting).
    """

    def __init__(self, mode: str, input_shape: tuple[int, ...], layout: str) -> None:
        super().__init__()
        if mode not in STANDARDIZE:
            raise ValueError(f"unknown standardisation {mode!r}; allowed: {', '.join(STANDARDIZE)}")
        self.mode = mode
        # Channels: [C, L] sequences have C; [L] sequences and [H, W] images have one. Statistics are kept
        # in a shape that broadcasts over one sample.
        multichannel = layout == "sequence" and len(input_shape) == 2
        self._stat_shape = (input_shape[0], 1) if multichannel else (1,) * len(input_shape)
        self._fit_axes = (0, 2) if multichannel else tuple(range(len(input_shape) + 1))
        self._time_axes = (-1,) if layout == "sequence" else tuple(range(-len(input_shape), 0))
        if mode == "channel":
            self.register_buffer("mean", torch.zeros(self._stat_shape))
            self.register_buffer("std", torch.ones(self._stat_shape))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Measure the ``channel`` statistics on the training inputs ``x`` [N, *input_shape]."""
        if self.mode != "channel":
            return
        x = torch.as_tensor(x, dtype=torch.float64)  # float64: sums over many samples stay exact enough
        self.mean.copy_(x.mean(self._fit_axes).reshape(self._stat_shape))
        std = x.std(self._fit_axes, correction=0).reshape(self._stat_shape)
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "channel":
            return (x - self.mean) / self.std
        if self.mode == "series":
            mean = x.mean(self._time_axes, keepdim=True)
            std = x.std(self._time_axes, keepdim=True, correction=0)
            return (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
        return x

    def extra_repr(self) -> str:
        return self.mode


class Classifier(nn.Module):
    """``logits = head(backbone(scaler(x)))``; ``features(x)`` is the penultimate layer. ``scaler`` is a
    ``Standardize`` (``factory.build_net`` sets it) or the identity."""

    backbone: nn.Module
    head: nn.Linear

    def __init__(self) -> None:
        super().__init__()
        self.scaler: nn.Module = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.scaler(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def weight_matrices(net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layers whose gradient norms Sounding reports: every parameter of rank ≥ 2, input first, named
    without the ``.weight`` suffix (``backbone.input``, …, ``head``)."""
    return [(name.removesuffix(".weight"), p) for name, p in net.named_parameters() if p.ndim >= 2]


def flat_size(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features ``module`` produces for one sample of ``input_shape``."""
    with torch.no_grad():
        return int(module(torch.zeros(1, *input_shape)).shape[-1])


def init_weights(module: nn.Module, strategy: str) -> None:
    """Re-initialise weight matrices in place; biases go to zero. ``default`` keeps PyTorch's init.

    ``kaiming`` uses He-normal for ReLU (gain √2); ``xavier`` Glorot-uniform; ``orthogonal`` an orthogonal
    matrix scaled by the ReLU gain √2, which preserves the signal norm through deep ReLU stacks.
    """
    if strategy == "default":
        return
    if strategy not in INITS:
        raise ValueError(f"unknown init {strategy!r}; allowed: {', '.join(INITS)}")
    for name, param in module.named_parameters():
        if param.ndim < 2:
            if "bias" in name:
                nn.init.zeros_(param)
            continue
        if strategy == "xavier":
            nn.init.xavier_uniform_(param)
        elif strategy == "kaiming":
            nn.init.kaiming_normal_(param, nonlinearity="relu")
        else:
            nn.init.orthogonal_(param, gain=math.sqrt(2.0))
