"""What every classifier network shares: backbone → head, and weight-initialisation strategies."""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("default", "xavier", "kaiming", "orthogonal")


class Classifier(nn.Module):
    """``logits = head(backbone(x))``; ``features(x)`` is the penultimate layer."""

    backbone: nn.Module
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


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
