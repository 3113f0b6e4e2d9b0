"""``LitClassifier``: loss, metrics, logging and optimiser around any classifier network."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from sounding.errors import TrainingDiverged
from sounding.models.factory import build_net
from sounding.models.nets.base import weight_matrices

Batch = tuple[torch.Tensor, torch.Tensor]


class LitClassifier(L.LightningModule):
    """Cross-entropy classifier, written as Lightning's own examples write one.

    ``weight_decay`` is L2: coupled (added to the gradient) with ``adam`` and ``sgd``, decoupled with
    ``adamw``. ``l1`` adds ``l1 * Σ|w|`` over weight matrices to the loss. Gradient clipping is the
    Trainer's (``gradient_clip_val``), which under mixed precision clips after unscaling. The backbone
    learns at ``lr × backbone_lr_scale`` and the head at ``lr``; a scale of 0 freezes the backbone (a linear
    probe of its features). Every constructor argument is a primitive saved in the checkpoint, so
    ``LitClassifier.load_from_checkpoint(path)`` needs nothing else.

    Automatic optimisation, one mini-batch per ``training_step``; validation and test through Lightning's
    loops. Logged per epoch: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``grad_norm/<layer>``
    (mean L2 norm of each weight's gradient over the epoch's steps, after unscaling and before clipping);
    on test ``test/acc``, ``test/f1_macro``, ``test/loss``. A non-finite training loss raises
    ``TrainingDiverged`` at the end of its epoch: checked once an epoch, not at every step, which would
    make the host wait for the device at each step.
    """

    def __init__(
        self,
        arch: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        layout: str = "sequence",
        net: dict[str, Any] | None = None,
        optimizer: str = "adam",
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        l1: float = 0.0,
        lr_schedule: str = "constant",
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_net(arch, tuple(input_shape), num_classes, layout, **(net or {}))
        self.net.backbone.requires_grad_(backbone_lr_scale > 0)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self._weights = weight_matrices(self.net)
        self._reset_epoch_sums()

    def _reset_epoch_sums(self) -> None:
        # [loss sum, correct, seen, non-finite losses] and the gradient norm sums, on the device and read once an
        # epoch: ``self.log`` at every step walked Lightning's result collection, 0.5 ms a call here.
        self._sums = torch.zeros(4, device=self.device)
        self._grad_norms = torch.zeros(len(self._weights), device=self.device)
        self._steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        self._reset_epoch_sums()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum()
            self._sums.add_(
                torch.stack([loss * len(y), correct, loss.new_tensor(len(y)), ~torch.isfinite(loss)])
            )
        if self.hparams.l1:
            loss = loss + self.hparams.l1 * sum(p.abs().sum() for _, p in self._weights)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after the precision plugin unscaled the gradients and before it clips them.
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self._weights]
        self._grad_norms.add_(torch.stack(torch._foreach_norm(grads)))
        self._steps += 1

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if batch_idx + 1 < self.trainer.num_training_batches:
            return
        # The epoch's last batch: its figures are logged before validation and the epoch-end hooks run.
        loss_sum, correct, seen, non_finite = self._sums.tolist()
        if non_finite:
            raise TrainingDiverged(
                f"{self.hparams.arch}: training loss became non-finite in epoch {self.current_epoch}; "
                "lower train.lr or enable train.gradient_clip_val"
            )
        figures = {"train/loss": loss_sum / seen, "train/acc": correct / seen}
        if self._steps:
            # Gradients are synchronised across processes before the step: every rank has the same norms.
            norms = (self._grad_norms / self._steps).tolist()
            figures |= {f"grad_norm/{name}": v for (name, _), v in zip(self._weights, norms, strict=True)}
        self.log_dict(figures, sync_dist=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        n = len(y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=n)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), sync_dist=True, batch_size=n)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.test_acc(logits, y)
        self.test_f1(logits, y)
        self.log("test/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("test/acc", self.test_acc, on_epoch=True)
        self.log("test/f1_macro", self.test_f1, on_epoch=True)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.net(x).softmax(-1)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        backbone = [p for p in self.net.backbone.parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in self.net.named_parameters() if not n.startswith("backbone.")]}]
        if backbone:
            groups.append({"params": backbone, "lr": hp.lr * hp.backbone_lr_scale})
        # foreach: one multi-tensor kernel per update instead of a Python loop over parameters (the
        # default on GPUs only); same numbers, and 20-30% off a CPU step of these small networks.
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay, foreach=True
            )
        else:
            cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
            optimizer = cls(groups, lr=hp.lr, weight_decay=hp.weight_decay, foreach=True)
        if hp.lr_schedule == "constant":
            return optimizer
        # Cosine decay to zero over the whole run, stepped per epoch.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(self.trainer.max_epochs, 1)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
