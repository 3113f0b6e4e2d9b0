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


class LitClassifier(L.LightningModule):
    """Cross-entropy classifier.

    ``weight_decay`` is L2: coupled (added to the gradient) with ``adam`` and ``sgd``, decoupled with
    ``adamw``. ``l1`` adds ``l1 * Σ|w|`` over weight matrices to the loss. Gradient clipping is the
    Trainer's. The backbone learns at ``lr × backbone_lr_scale`` and the head at ``lr``; a scale of 0
    freezes the backbone (a linear probe of its features). Every constructor argument is a primitive saved in the checkpoint, so
    ``LitClassifier.load_from_checkpoint(path)`` needs nothing else.

    Logged per epoch: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``grad_norm/<layer>``
    (mean L2 norm of each weight's gradient before clipping); on test ``test/acc``, ``test/f1_macro``,
    ``test/loss``.
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
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self._weights = weight_matrices(self.net)
        self._reset_epoch_sums()

    def _reset_epoch_sums(self) -> None:
        # Summed on the device per step and read once per epoch: no host sync in the hot loop.
        self._loss_sum = torch.zeros((), device=self.device)
        self._correct = torch.zeros((), device=self.device)
        self._seen = 0
        self._grad_sq = torch.zeros(len(self._weights), device=self.device)
        self._grad_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{self.hparams.arch}: training loss became {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step}; lower train.lr or enable train.gradient_clip_val"
            )
        self._loss_sum += loss.detach() * len(y)
        self._correct += (logits.argmax(1) == y).sum()
        self._seen += len(y)
        if self.hparams.l1:
            loss = loss + self.hparams.l1 * sum(p.abs().sum() for _, p in self._weights)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self._weights]
        self._grad_sq += torch.stack(torch._foreach_norm(grads))
        self._grad_steps += 1

    def on_train_epoch_start(self) -> None:
        self._reset_epoch_sums()

    def on_train_epoch_end(self) -> None:
        seen = max(self._seen, 1)
        self.log("train/loss", self._loss_sum / seen, sync_dist=True)
        self.log("train/acc", self._correct / seen, sync_dist=True)
        if self._grad_steps:
            norms = self._grad_sq / self._grad_steps
            self.log_dict(
                {f"grad_norm/{name}": norms[i] for i, (name, _) in enumerate(self._weights)}, sync_dist=True
            )

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True)

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
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        else:
            cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
            optimizer = cls(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return optimizer
        # Cosine decay to zero over the whole run, stepped per epoch.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(self.trainer.max_epochs, 1)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
