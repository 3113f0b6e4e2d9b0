"""``LitGAN``: a class-conditional GAN trained with manual optimisation (``d_steps`` discriminator updates
per generator update), with a fixed validation noise so that epochs can be compared sample for sample."""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F

from sounding.models.nets.gan import Discriminator, Generator


class LitGAN(L.LightningModule):
    """Non-saturating GAN loss; one-sided label smoothing (real targets ``1 - label_smoothing``).

    ``generator_ema`` is an exponential moving average of the generator's weights (decay ``ema`` per
    generator step; 0 makes it a copy of the latest weights). It is the generator that is sampled, measured
    and shipped: averaging smooths out the oscillation of adversarial training around a good solution.
    """

    def __init__(
        self,
        num_classes: int,
        length: int,
        latent: int = 32,
        channels: int = 32,
        lr_g: float = 2e-3,
        lr_d: float = 2e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        label_smoothing: float = 0.1,
        d_steps: int = 1,
        ema: float = 0.999,
        samples_per_class: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(latent, num_classes, length, channels)
        self.discriminator = Discriminator(num_classes, length, channels)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        noise = torch.Generator().manual_seed(seed)
        self.register_buffer("z_val", torch.randn(num_classes * samples_per_class, latent, generator=noise))
        self.register_buffer("y_val", torch.arange(num_classes).repeat_interleave(samples_per_class))

    def sample(self) -> torch.Tensor:
        """The averaged generator's output on the fixed validation noise (``samples_per_class`` per class,
        in class order)."""
        with torch.no_grad():
            return self.generator_ema(self.z_val, self.y_val)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        x, n, hp = x.flatten(1), len(y), self.hparams
        opt_g, opt_d = self.optimizers()
        # One generated batch serves the first discriminator step (detached) and the generator step: the
        # generator has not changed in between, and its forward pass is the dearest op of the step.
        fake = self.generator(torch.randn(n, hp.latent, device=self.device), y)
        real_target = torch.full((n,), 1.0 - hp.label_smoothing, device=self.device)
        self.toggle_optimizer(opt_d)
        for step in range(hp.d_steps):
            if step == 0:
                d_fake = fake.detach()
            else:
                with torch.no_grad():
                    d_fake = self.generator(torch.randn(n, hp.latent, device=self.device), y)
            logits = self.discriminator(torch.cat([x, d_fake]), torch.cat([y, y]))
            d_loss = F.binary_cross_entropy_with_logits(
                logits[:n], real_target
            ) + F.binary_cross_entropy_with_logits(logits[n:], torch.zeros_like(real_target))
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.toggle_optimizer(opt_g)
        g_loss = F.binary_cross_entropy_with_logits(
            self.discriminator(fake, y), torch.ones(n, device=self.device)
        )
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        with torch.no_grad():
            for averaged, current in zip(
                self.generator_ema.parameters(), self.generator.parameters(), strict=True
            ):
                averaged.lerp_(current, 1.0 - hp.ema)
        self.log("train/d_loss", d_loss.detach(), on_step=False, on_epoch=True, batch_size=n)
        self.log("train/g_loss", g_loss.detach(), on_step=False, on_epoch=True, batch_size=n)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        return [
            torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=tuple(hp.betas), foreach=True),
            torch.optim.Adam(
                self.discriminator.parameters(), lr=hp.lr_d, betas=tuple(hp.betas), foreach=True
            ),
        ]
