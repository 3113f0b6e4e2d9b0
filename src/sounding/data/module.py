"""In-memory mini-batches and the Lightning DataModule over prepared data.

Small models on a CPU are dominated by framework overhead, so the data stays as tensors in memory and
batches are index slices: no DataLoader workers, no per-sample collation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from sounding.data.prepare import Prepared, Split


class EpochPermutation:
    """Sample order for one epoch, a pure function of (seed, epoch).

    Lightning's fit loop calls ``set_epoch`` on a loader's ``sampler`` before each epoch, so a resumed
    run sees exactly the order an uninterrupted run would have seen.
    """

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        return order[self.rank :: self.world_size]  # each rank its own shard


class InMemoryBatches:
    """Iterable of (x, y) batches sliced from tensors already on the target device.

    It mirrors the two DataLoader attributes Lightning inspects: ``sampler`` (whose ``set_epoch`` the fit
    loop calls) and ``batch_sampler`` (none).
    """

    batch_sampler = None

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, sampler: EpochPermutation) -> None:
        self.x, self.y, self.batch_size, self.sampler = x, y, batch_size, sampler

    def __len__(self) -> int:
        shard = len(range(self.sampler.rank, self.sampler.n, self.sampler.world_size))
        return -(-shard // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.sampler.indices().to(self.x.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]


class BatchGroups:
    """Training loader whose items are lists of ``size`` consecutive batches (``None``: the whole epoch),
    so that one Lightning ``training_step`` runs several optimizer steps (see ``LitClassifier``)."""

    batch_sampler = None

    def __init__(self, batches: InMemoryBatches, size: int | None) -> None:
        self.batches, self.size, self.sampler = batches, size, batches.sampler

    def __len__(self) -> int:
        return 1 if self.size is None else -(-len(self.batches) // self.size)

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        batches = iter(self.batches)
        while group := list(itertools.islice(batches, self.size or len(self.batches))):
            yield group


class TensorDataModule(L.LightningDataModule):
    """Serves a ``Prepared`` dataset. Knows nothing of the model; ``spec`` tells the factory what it needs.

    With ``group_batches``, training items are lists of batches: the whole epoch in a single process, one
    batch per item under several (each DDP forward must be followed by exactly one backward).
    """

    def __init__(
        self,
        data: Prepared,
        batch_size: int,
        seed: int,
        eval_batch_size: int = 1000,
        group_batches: bool = False,
    ) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed, self.eval_batch_size = data, batch_size, seed, eval_batch_size
        self.group_batches = group_batches
        self.spec = data.spec

    def _batches(self, split: Split, batch_size: int, shuffle: bool) -> InMemoryBatches:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        x = torch.as_tensor(split.x, device=device)
        y = torch.as_tensor(split.y, device=device)
        return InMemoryBatches(x, y, batch_size, EpochPermutation(len(y), shuffle, self.seed, rank, world))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """An (x, y) pair or a list of them, moved pair by pair (a no-op: ``_batches`` already placed the
        tensors on the training device). Lightning's generic walk over a whole epoch's list of batches
        cost more than the epoch's compute for the small networks here."""
        if isinstance(batch, list):
            return [(x.to(device), y.to(device)) for x, y in batch]
        x, y = batch
        return x.to(device), y.to(device)

    def train_dataloader(self) -> InMemoryBatches | BatchGroups:
        batches = self._batches(self.data.train, self.batch_size, shuffle=True)
        if not self.group_batches:
            return batches
        return BatchGroups(batches, None if self.trainer is None or self.trainer.world_size == 1 else 1)

    def val_batches(self) -> InMemoryBatches:
        """This process's validation shard, read by the LightningModule at each epoch's end
        (``LitClassifier``); not a ``val_dataloader``: Lightning's validation loop does not run."""
        return self._batches(self.data.val, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> InMemoryBatches:
        return self._batches(self.data.test, self.eval_batch_size, shuffle=False)
