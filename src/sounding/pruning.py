"""Optuna's Lightning pruning callback, fed where ``LitClassifier`` puts its validation metrics."""

from __future__ import annotations

import lightning as L
from optuna_integration import PyTorchLightningPruningCallback


class EpochEndPruning(PyTorchLightningPruningCallback):
    """Reports ``monitor`` to the trial at each training epoch's end and prunes there.

    Optuna's callback listens to ``on_validation_end``, which never fires here: the LightningModule
    validates inside its training epoch (``LitClassifier``), so the metric is ready by
    ``on_train_epoch_end``. A pruned trial raises before ``EpochCheckpoint`` (a ``Checkpoint`` callback,
    called after the others) records the epoch, as it did from ``on_validation_end``.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_validation_end(trainer, pl_module)
