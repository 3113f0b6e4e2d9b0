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
    """Cross-entropy classifier.

    ``weight_decay`` is L2: coupled (added to the gradient) with ``adam`` and ``sgd``, decoupled with
    ``adamw``. ``l1`` adds ``l1 * Σ|w|`` over weight matrices to the loss. Gradients are clipped by norm
    or by value with Lightning's ``clip_gradients`` (its precision plugin unscales first under AMP). The
    backbone learns at ``lr × backbone_lr_scale`` and the head at ``lr``; a scale of 0 freezes the backbone
    (a linear probe of its features). Every constructor argument is a primitive saved in the checkpoint,
    so ``LitClassifier.load_from_checkpoint(path)`` needs nothing else.

    Optimisation is manual, and one ``training_step`` may take a list of mini-batches (``TensorDataModule``
    hands a single process the whole epoch at once): Lightning's per-step machinery (closure, hooks,
    result collection) would otherwise cost more than the forward and backward passes of these small
    networks. Under several processes or float16 AMP, backward and step go through Lightning's wrappers,
    which synchronise gradients (DDP) and scale the loss; a single process in 32-bit or bf16 needs neither.

    Validation is the module's too: the epoch's last ``training_step`` ends with a pass over the
    datamodule's ``val_batches()`` (each process its shard, the sums reduced over processes), which puts
    ``val/loss`` and ``val/acc`` in ``trainer.callback_metrics`` before any epoch-end hook runs. Lightning's
    evaluation loop (disabled by ``training.make_trainer``) cost about 0.5 ms an epoch in dispatch alone, 5%
    of an epoch of the logistic model (docs/benchmarks.md, figure 1). Callbacks read validation metrics at
    ``on_train_epoch_end``; ``on_validation_*`` hooks never run during a fit.

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
        gradient_clip_val: float = 0.0,
        gradient_clip_algorithm: str = "norm",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self._lightning_steps = True  # decided in on_fit_start, once the Trainer is known
        self.net = build_net(arch, tuple(input_shape), num_classes, layout, **(net or {}))
        self.net.backbone.requires_grad_(backbone_lr_scale > 0)
        self.epoch_metrics: dict[str, float] = {}
        """The last training epoch's ``train/loss``, ``train/acc`` and ``grad_norm/<layer>``, summed over
        processes (read by the epoch callbacks; ``self.log`` costs more per key than an epoch of a small
        network, and validation metrics still go through it for callbacks such as pruning)."""
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self._weights = weight_matrices(self.net)
        self._val_batches: list[Batch] | None = None  # the fit's validation batches, set in on_fit_start
        self._reset_epoch_sums()

    def _reset_epoch_sums(self) -> None:
        # [loss sum, correct, seen, optimizer steps, squared-gradient-norm sum per weight], kept on the
        # device and read once per epoch: no host sync in the hot loop.
        self._epoch_sums = torch.zeros(4 + len(self._weights), device=self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        trainer = self.trainer
        self._lightning_steps = trainer.world_size > 1 or trainer.precision not in ("32-true", "bf16-mixed")
        val_batches = getattr(trainer.datamodule, "val_batches", None)  # TensorDataModule's
        # Sliced once: the validation batches are the same at every epoch (no shuffling).
        self._val_batches = list(val_batches()) if val_batches is not None else None

    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> None:
        """One optimizer step per mini-batch of ``batch``: one (x, y) pair, or a list of them."""
        hp = self.hparams
        optimizer = self.optimizers(use_pl_optimizer=self._lightning_steps)
        batches = batch if isinstance(batch, list) else [batch]
        # Locals, not attributes: nn.Module.__setattr__ would cost microseconds on every update.
        loss_sum = correct = torch.zeros((), device=self.device)
        grad_sq = torch.zeros(len(self._weights), device=self.device)
        seen = 0
        for step, (x, y) in enumerate(batches):
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{hp.arch}: training loss became {loss.item()} at epoch {self.current_epoch}, "
                    f"step {step}; lower train.lr or enable train.gradient_clip_val"
                )
            loss_sum = loss_sum + loss.detach() * len(y)
            correct = correct + (logits.argmax(1) == y).sum()
            seen += len(y)
            if hp.l1:
                loss = loss + hp.l1 * sum(p.abs().sum() for _, p in self._weights)
            optimizer.zero_grad(set_to_none=True)
            if self._lightning_steps:
                self.manual_backward(loss)
            else:
                loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self._weights]
            grad_sq = grad_sq + torch.stack(torch._foreach_norm(grads))
            if hp.gradient_clip_val:
                self.clip_gradients(optimizer, hp.gradient_clip_val, hp.gradient_clip_algorithm)
            optimizer.step()
        counts = torch.tensor([seen, len(batches)], device=self.device)
        self._epoch_sums += torch.cat([loss_sum[None], correct[None], counts, grad_sq])
        if batch_idx + 1 == self.trainer.num_training_batches:
            self._validate()

    def on_train_epoch_start(self) -> None:
        self._reset_epoch_sums()

    def _sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        """One collective call per epoch for all the epoch's sums (the identity in a single process)."""
        return self.trainer.strategy.reduce(values, reduce_op="sum")

    def on_train_epoch_end(self) -> None:
        schedule = self.lr_schedulers()
        if schedule is not None:
            schedule.step()
        loss, correct, seen, steps, *grad_sq = self._sum_over_processes(self._epoch_sums).tolist()
        self.epoch_metrics = {"train/loss": loss / max(seen, 1), "train/acc": correct / max(seen, 1)}
        if steps:
            self.epoch_metrics.update(
                {f"grad_norm/{name}": grad_sq[i] / steps for i, (name, _) in enumerate(self._weights)}
            )

    def _validate(self) -> None:
        """``val/loss`` and ``val/acc`` of the current weights, over every process's validation shard."""
        if self._val_batches is None:
            return
        sums = torch.zeros(3, device=self.device)  # loss sum, correct, seen
        self.net.eval()
        with torch.no_grad():
            for x, y in self._val_batches:
                logits = self.net(x)
                sums[0] += F.cross_entropy(logits, y, reduction="sum")
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += len(y)
        self.net.train()
        loss, correct, seen = self._sum_over_processes(sums)
        # Straight into the dict callbacks read (Optuna pruning, EpochCheckpoint, the progress bar): for two
        # values already summed over processes, ``self.log`` walked Lightning's whole result collection
        # and cost more than the validation pass itself (docs/benchmarks.md, figure 1).
        self.trainer.callback_metrics.update({"val/loss": loss / seen, "val/acc": correct / seen})

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
