"""``LitGAN``: a class-conditional GAN trained with manual optimisation (``d_steps`` discriminator updates
per generator update), with a fixed validation noise so that epochs can be compared sample for sample."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from sounding.models.nets.gan import Discriminator, Generator


class LitGAN(L.LightningModule):
    """Non-saturating GAN loss; one-sided label smoothing (real targets ``1 - label_smoothing``)."""

    def __init__(
        self,
        num_classes: int,
        length: int,
        latent: int = 32,
        hidden: int = 128,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        label_smoothing: float = 0.1,
        d_steps: int = 1,
        samples_per_class: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(latent, num_classes, length, hidden)
        self.discriminator = Discriminator(num_classes, length, hidden)
        noise = torch.Generator().manual_seed(seed)
        self.register_buffer("z_val", torch.randn(num_classes * samples_per_class, latent, generator=noise))
        self.register_buffer("y_val", torch.arange(num_classes).repeat_interleave(samples_per_class))
        self._sums = {"d": 0.0, "g": 0.0, "n": 0}

    def sample(self) -> torch.Tensor:
        """The generator's output on the fixed validation noise (``samples_per_class`` per class, in order)."""
        with torch.no_grad():
            return self.generator(self.z_val, self.y_val)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        x = x.flatten(1)
        opt_g, opt_d = self.optimizers()
        real_target = torch.full((len(y),), 1.0 - self.hparams.label_smoothing, device=self.device)
        for _ in range(self.hparams.d_steps):
            fake = self.generator(torch.randn(len(y), self.hparams.latent, device=self.device), y).detach()
            d_loss = F.binary_cross_entropy_with_logits(
                self.discriminator(x, y), real_target
            ) + F.binary_cross_entropy_with_logits(self.discriminator(fake, y), torch.zeros_like(real_target))
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
        fake = self.generator(torch.randn(len(y), self.hparams.latent, device=self.device), y)
        g_loss = F.binary_cross_entropy_with_logits(
            self.discriminator(fake, y), torch.ones(len(y), device=self.device)
        )
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self._sums["d"] += float(d_loss.detach()) * len(y)
        self._sums["g"] += float(g_loss.detach()) * len(y)
        self._sums["n"] += len(y)

    def on_train_epoch_start(self) -> None:
        self._sums = {"d": 0.0, "g": 0.0, "n": 0}

    def on_train_epoch_end(self) -> None:
        n = max(self._sums["n"], 1)
        self.log("train/d_loss", self._sums["d"] / n)
        self.log("train/g_loss", self._sums["g"] / n)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        return [
            torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=tuple(hp.betas), foreach=True),
            torch.optim.Adam(
                self.discriminator.parameters(), lr=hp.lr_d, betas=tuple(hp.betas), foreach=True
            ),
        ]
