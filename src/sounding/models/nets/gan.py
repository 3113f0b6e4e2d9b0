"""Class-conditional generator and discriminator for 1-D signals (MNIST-1D: length 40).

Both are MLPs conditioned by concatenating a learned label embedding. For 40-sample signals an MLP sees
the whole signal at once, trains in seconds on a CPU and is stable with the standard DCGAN optimiser
settings; a 1-D convolutional generator would add upsampling artefacts and tuning for no measurable gain at
this length.
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """(z [N, latent], y [N]) → signal [N, length].

    >>> Generator(latent=8, num_classes=10, length=40)(torch.zeros(3, 8), torch.arange(3)).shape
    torch.Size([3, 40])
    """

    def __init__(self, latent: int = 32, num_classes: int = 10, length: int = 40, hidden: int = 128) -> None:
        super().__init__()
        self.latent = latent
        self.embed = nn.Embedding(num_classes, 16)
        self.body = nn.Sequential(
            nn.Linear(latent + 16, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, length),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([z, self.embed(y)], dim=1))


class Discriminator(nn.Module):
    """(x [N, length], y [N]) → real/fake logit [N].

    >>> Discriminator(num_classes=10, length=40)(torch.zeros(3, 40), torch.arange(3)).shape
    torch.Size([3])
    """

    def __init__(
        self, num_classes: int = 10, length: int = 40, hidden: int = 128, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, 16)
        self.body = nn.Sequential(
            nn.Linear(length + 16, hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x.flatten(1), self.embed(y)], dim=1)).squeeze(1)
