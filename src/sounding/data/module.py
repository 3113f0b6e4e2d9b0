"""The Lightning DataModule over prepared data: ``DataLoader``s of whole mini-batches.

Small models on a CPU are dominated by per-sample overhead, so a batch is fetched with one indexing
operation (``ArrayDataset.__getitems__``) instead of one ``__getitem__`` and a collation per sample; there
are no loader workers (in-memory data has nothing to wait for). Arrays already in memory become tensors
once, without a copy; memory-mapped arrays (``np.load(path, mmap_mode="r")``, data larger than memory)
are read batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sounding.data.prepare import Prepared, Split

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochPermutation(Sampler[int]):
    """Sample order for one epoch of ``length`` indices into ``n`` samples (default ``length = n``): seeded
    permutations of the samples back to back, a pure function of (seed, epoch).

    An epoch longer than the data (``length > n``) passes over it several times: a small training set then
    gets as many optimizer steps per epoch as a larger one, and is validated and checkpointed once per
    epoch rather than once per step or two. With ``length = n`` it is one permutation.

    Lightning's fit loop calls ``set_epoch`` before each epoch, so a resumed run sees exactly the order an
    uninterrupted run would have seen (Lightning restores no RNG state). Under DDP Lightning wraps it in
    its ``DistributedSamplerWrapper``, which deals the indices to the ranks, padded so that every rank
    runs the same number of batches.
    """

    def __init__(self, n: int, seed: int, length: int | None = None) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.length = length or n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        passes = [torch.randperm(self.n, generator=gen) for _ in range(-(-self.length // self.n))]
        return torch.cat(passes)[: self.length]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.length


class ArrayDataset(Dataset):
    """(x, y) samples of two arrays: tensors in memory, or memory-mapped numpy arrays read per batch."""

    def __init__(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        self.mapped = isinstance(x, np.memmap)
        # In memory: a tensor view of the array (no copy), indexed without numpy per batch.
        self.x = x if self.mapped else torch.as_tensor(x)
        self.y = torch.as_tensor(np.asarray(y))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> Batch:
        """A whole batch in one indexing operation (``DataLoader`` calls this with the batch's indices)."""
        idx = torch.as_tensor(indices)
        if self.mapped:
            x = torch.from_numpy(np.ascontiguousarray(self.x[idx.numpy()], dtype=np.float32))
        else:
            x = self.x[idx]
        return x, self.y[idx]


def as_batch(batch: Batch) -> Batch:
    """``collate_fn`` for ``ArrayDataset``, whose ``__getitems__`` already returns a collated batch."""
    return batch


class TensorDataModule(L.LightningDataModule):
    """Serves a ``Prepared`` dataset. Knows nothing of the model; ``spec`` tells the factory what it needs.

    Training batches follow ``EpochPermutation(seed)``, ``epoch_samples`` indices an epoch (default: the
    training part once); validation and test batches are in order.
    """

    def __init__(
        self,
        data: Prepared,
        batch_size: int,
        seed: int,
        eval_batch_size: int = 1000,
        epoch_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed, self.eval_batch_size = data, batch_size, seed, eval_batch_size
        self.epoch_samples = epoch_samples
        self.spec = data.spec

    def _loader(self, split: Split, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            ArrayDataset(split.x, split.y),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=as_batch,
            # Its own generator: every new iterator draws a seed for its workers, which from torch's global
            # generator would shift the dropout masks that ``EpochSeed`` fixes for the epoch.
            generator=torch.Generator(),
        )

    def train_sampler(self) -> Sampler[int]:
        return EpochPermutation(len(self.data.train.y), self.seed, self.epoch_samples)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data.train, self.batch_size, self.train_sampler())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data.val, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data.test, self.eval_batch_size)

    def predict_dataloader(self) -> Any:
        return self.test_dataloader()
